//! `capture::policy::resp::parse`, the reader of Redis replies.
//!
//! Replies come off a socket in whatever pieces TCP delivers, and the
//! policy pipe parses what it has so far, waiting for more on `None`. So
//! besides "never panics" and "a reply takes at most the bytes given":
//! reading the same bytes after a first, shorter piece must end the same
//! way as reading them whole. A piece that holds a whole reply gives that
//! reply; one that does not waits, or fails only where the whole fails.
//!
//! The first two bytes choose where the bytes are cut; the rest are the
//! bytes Redis sent.

#![no_main]

use capture::policy::resp::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((cut, bytes)) = data.split_first_chunk::<2>() else {
        return;
    };
    let whole = parse(bytes);
    if let Ok(Some((_, used))) = &whole {
        assert!(
            *used > 0 && *used <= bytes.len(),
            "took {used} of {}",
            bytes.len()
        );
        // The bytes after the reply do not change it.
        assert_eq!(
            parse(&bytes[..*used]),
            whole,
            "the reply alone reads differently"
        );
    }

    let cut = usize::from(u16::from_le_bytes(*cut)) % (bytes.len() + 1);
    let first = parse(&bytes[..cut]);
    match &first {
        // Not all there yet: the pipe waits and reads the whole.
        Ok(None) => {
            if let Ok(Some((_, used))) = &whole {
                assert!(
                    *used > cut,
                    "waited although {used} bytes of {cut} made a reply"
                );
            }
        }
        Ok(Some((_, used))) => {
            assert!(*used <= cut);
            assert_eq!(
                &first, &whole,
                "a whole reply in the first piece reads differently"
            );
        }
        // Bytes already wrong stay wrong however many follow.
        Err(_) => assert!(whole.is_err(), "{first:?} before the rest, {whole:?} after"),
    }
});

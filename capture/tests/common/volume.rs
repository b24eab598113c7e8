//! A directory laid out as kubelet mounts a ConfigMap or Secret volume:
//! each file `name` -> `..data/name`, `..data` -> a timestamped directory,
//! updated by writing a new directory and renaming a new link over `..data`
//! (so every file changes at once), then removing the old directory.

use std::path::PathBuf;

/// A kubelet-style projected volume in a temporary directory.
pub struct Volume {
    dir: tempfile::TempDir,
    generation: u32,
}

impl Volume {
    /// A volume holding `files` (name, text).
    pub fn new(files: &[(&str, &str)]) -> Volume {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.path().join(name))
                .expect("file link");
        }
        let mut volume = Volume { dir, generation: 0 };
        volume.update(files);
        volume
    }

    /// The path a pod reads `name` at.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Swaps in new contents for every file, atomically, as kubelet does.
    pub fn update(&mut self, files: &[(&str, &str)]) {
        self.generation += 1;
        let root = self.dir.path();
        let name = format!(
            "..2026_11_26_00_00_{:02}.{}",
            self.generation, self.generation
        );
        std::fs::create_dir(root.join(&name)).expect("data dir");
        for (file, text) in files {
            std::fs::write(root.join(&name).join(file), text).expect("write");
        }
        let tmp = root.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&name, &tmp).expect("new link");
        let old = std::fs::read_link(root.join("..data")).ok();
        std::fs::rename(&tmp, root.join("..data")).expect("swap");
        if let Some(old) = old {
            let _ = std::fs::remove_dir_all(root.join(old));
        }
    }
}

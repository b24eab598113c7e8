//! `anonymizeIp`: zeroes the host part of the client IP, in the message's
//! `ip` and in the event's `$ip` property when present.

use std::net::IpAddr;

use serde_json::Value;

use super::{Event, Plugin, Verdict};
use crate::runtime_config;

/// The `anonymizeIp` plugin.
#[derive(Debug)]
pub struct AnonymizeIp {
    ipv4_bits: u8,
    ipv6_bits: u8,
}

impl AnonymizeIp {
    /// From its settings.
    pub fn new(settings: &runtime_config::AnonymizeIp) -> Self {
        AnonymizeIp {
            ipv4_bits: settings.ipv4_prefix.unwrap_or(24).min(32),
            ipv6_bits: settings.ipv6_prefix.unwrap_or(48).min(128),
        }
    }

    /// `text` with only its leading prefix bits kept; unparsable text is
    /// left as it is.
    pub fn mask(&self, text: &str) -> Option<String> {
        let ip: IpAddr = text.trim().parse().ok()?;
        Some(match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let keep = if self.ipv4_bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.ipv4_bits))
                };
                std::net::Ipv4Addr::from(bits & keep).to_string()
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let keep = if self.ipv6_bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.ipv6_bits))
                };
                std::net::Ipv6Addr::from(bits & keep).to_string()
            }
        })
    }
}

impl Plugin for AnonymizeIp {
    fn name(&self) -> &'static str {
        "anonymizeIp"
    }

    fn process(&self, event: &mut Event<'_, '_>) -> Verdict {
        if let Some(masked) = self.mask(event.ip) {
            *event.ip = masked;
        }
        let property = event
            .properties_mut()
            .and_then(|properties| properties.get_mut("$ip"));
        if let Some(value @ Value::String(_)) = property
            && let Some(masked) = value.as_str().and_then(|ip| self.mask(ip))
        {
            *value = Value::String(masked);
        }
        Verdict::Keep
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::AnonymizeIp;
    use crate::plugins::testing::{pipeline, run};
    use crate::runtime_config;

    #[test]
    fn the_host_part_is_zeroed_in_both_places() {
        let p = pipeline("version: 1\nplugins: [{anonymizeIp: {}}]");
        let (_, body, ip) = run(
            &p,
            "phc_t",
            "e",
            "d",
            json!({"properties": {"$ip": "198.51.100.23"}}),
        );
        assert_eq!(ip, "203.0.113.0");
        assert_eq!(body["properties"]["$ip"], "198.51.100.0");
        let custom = AnonymizeIp::new(&runtime_config::AnonymizeIp {
            ipv4_prefix: Some(16),
            ipv6_prefix: Some(32),
        });
        assert_eq!(custom.mask("10.20.30.40").as_deref(), Some("10.20.0.0"));
        assert_eq!(
            custom.mask("2001:db8:1234:5678::1").as_deref(),
            Some("2001:db8::")
        );
        assert_eq!(custom.mask("not an ip"), None);
        let none = AnonymizeIp::new(&runtime_config::AnonymizeIp {
            ipv4_prefix: Some(0),
            ipv6_prefix: Some(0),
        });
        assert_eq!(none.mask("10.20.30.40").as_deref(), Some("0.0.0.0"));
        assert_eq!(none.mask("::1").as_deref(), Some("::"));
    }
}

//! `capture quota ...`: the runbook's way to set, read, reset and delete a
//! token's quota, through the same [`QuotaAdmin`] the operator uses.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use super::admin::{QuotaAdmin, QuotaSettings, TypeLimit};
use super::check::QuotaAction;
use super::keys::{Keys, QuotaType};
use super::store::{Store, StoreSettings, redacted};

/// Manage quotas in Redis.
#[derive(Debug, Parser)]
#[command(
    name = "capture quota",
    about = "Set, read, reset and delete project quotas in Redis"
)]
pub struct QuotaCli {
    #[command(flatten)]
    redis: RedisArgs,
    #[command(subcommand)]
    command: QuotaCommand,
}

#[derive(Debug, Args)]
struct RedisArgs {
    /// Redis URL, or comma-separated cluster nodes.
    #[arg(
        long,
        env = "CAPTURE_REDIS_URL",
        value_delimiter = ',',
        hide_env_values = true,
        global = true
    )]
    redis_url: Vec<String>,
    /// A file holding the Redis URL (or comma-separated cluster nodes), such
    /// as a mounted Secret key; instead of `--redis-url`.
    #[arg(long, env = "CAPTURE_REDIS_URL_FILE", global = true)]
    redis_url_file: Option<std::path::PathBuf>,
    /// The URLs are Redis Cluster nodes.
    #[arg(long, env = "CAPTURE_REDIS_CLUSTER", global = true)]
    redis_cluster: bool,
    /// PEM file of the CA that signed the servers' certificates
    /// (`rediss://`); unset: the system's roots.
    #[arg(long, env = "CAPTURE_REDIS_CA_FILE", global = true)]
    redis_ca_file: Option<std::path::PathBuf>,
    /// Key prefix (as the capture servers use it).
    #[arg(
        long,
        env = "CAPTURE_REDIS_KEY_PREFIX",
        default_value = "",
        global = true
    )]
    redis_key_prefix: String,
}

#[derive(Debug, Subcommand)]
enum QuotaCommand {
    /// Replace a token's quota settings (open windows carry over).
    Set {
        /// The project token.
        #[arg(long)]
        token: String,
        /// `TYPE=N`: at most N events of TYPE per window (repeatable).
        #[arg(long = "limit", value_name = "TYPE=N")]
        limits: Vec<String>,
        /// `TYPE=DURATION`: the window of TYPE's limit (default 1d).
        #[arg(long = "window", value_name = "TYPE=DURATION")]
        windows: Vec<String>,
        /// `TYPE=N`: cluster-wide events per second for TYPE.
        #[arg(long = "rate", value_name = "TYPE=N")]
        rates: Vec<String>,
        /// `TYPE=N`: burst for TYPE's rate.
        #[arg(long = "burst", value_name = "TYPE=N")]
        bursts: Vec<String>,
        /// Over-quota action for this token.
        #[arg(long, value_enum)]
        action: Option<QuotaAction>,
    },
    /// Print a token's settings and usage as JSON.
    Get {
        /// The project token.
        #[arg(long)]
        token: String,
    },
    /// End the open windows, so the whole limit is available again.
    Reset {
        /// The project token.
        #[arg(long)]
        token: String,
        /// Only this type (default: all).
        #[arg(long = "type")]
        kind: Option<QuotaType>,
    },
    /// Remove a token's settings, counters and rate state.
    Delete {
        /// The project token.
        #[arg(long)]
        token: String,
    },
}

/// Runs `capture quota` with `args` (starting at the program name) and
/// returns the process exit code.
pub async fn run(args: Vec<OsString>) -> i32 {
    let cli = match QuotaCli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() { 2 } else { 0 };
        }
    };
    match execute(cli).await {
        Ok(output) => {
            if !output.is_empty() {
                println!("{output}");
            }
            0
        }
        Err(err) => {
            eprintln!("capture quota: {}", redacted(&err));
            1
        }
    }
}

async fn execute(cli: QuotaCli) -> Result<String, String> {
    let keys = Keys::new(&cli.redis.redis_key_prefix)?;
    let mut urls = (!cli.redis.redis_url.is_empty()).then(|| cli.redis.redis_url.join(","));
    crate::config::read_credential(
        ("--redis-url", "--redis-url-file"),
        &mut urls,
        cli.redis.redis_url_file.as_deref(),
    )
    .map_err(|e| e.to_string())?;
    let urls = urls.unwrap_or_default();
    let settings = StoreSettings::from_urls(
        urls.split(','),
        cli.redis.redis_cluster,
        Duration::from_secs(5),
        Duration::from_secs(5),
    )
    .with_tls_ca(cli.redis.redis_ca_file.clone());
    if settings.urls.is_empty() {
        return Err(
            "set `--redis-url` or `--redis-url-file` (CAPTURE_REDIS_URL, CAPTURE_REDIS_URL_FILE)"
                .into(),
        );
    }
    let store = Store::open(&settings).map_err(|e| e.to_string())?;
    let admin = QuotaAdmin::new(store, keys);
    let redis_err = |e: redis::RedisError| format!("redis: {e}");
    match cli.command {
        QuotaCommand::Set {
            token,
            limits,
            windows,
            rates,
            bursts,
            action,
        } => {
            crate::token::validate(&token).map_err(|e| e.to_string())?;
            let settings = settings_from_flags(&limits, &windows, &rates, &bursts, action)?;
            admin.set(&token, &settings).await.map_err(redis_err)?;
            Ok(String::new())
        }
        QuotaCommand::Get { token } => {
            let status = admin.get(&token).await.map_err(redis_err)?;
            serde_json::to_string_pretty(&status).map_err(|e| e.to_string())
        }
        QuotaCommand::Reset { token, kind } => {
            admin.reset(&token, kind).await.map_err(redis_err)?;
            Ok(String::new())
        }
        QuotaCommand::Delete { token } => {
            admin.delete(&token).await.map_err(redis_err)?;
            Ok(String::new())
        }
    }
}

/// Settings from `TYPE=VALUE` flags; errors name the flag and what it takes.
pub fn settings_from_flags(
    limits: &[String],
    windows: &[String],
    rates: &[String],
    bursts: &[String],
    action: Option<QuotaAction>,
) -> Result<QuotaSettings, String> {
    let mut types: BTreeMap<QuotaType, TypeLimit> = BTreeMap::new();
    let pairs =
        |flag: &'static str, values: &[String]| -> Result<Vec<(QuotaType, String)>, String> {
            values
                .iter()
                .map(|pair| {
                    let (kind, value) = pair
                        .split_once('=')
                        .ok_or_else(|| format!("`--{flag} {pair}`: expected TYPE=VALUE"))?;
                    let kind: QuotaType = kind.parse().map_err(|e| format!("`--{flag}`: {e}"))?;
                    Ok((kind, value.to_owned()))
                })
                .collect()
        };
    for (kind, value) in pairs("limit", limits)? {
        let limit = value
            .parse()
            .map_err(|_| format!("`--limit {kind}={value}`: expected a whole number of events"))?;
        types.entry(kind).or_default().limit = Some(limit);
    }
    for (kind, value) in pairs("window", windows)? {
        let window = humantime::parse_duration(&value)
            .ok()
            .filter(|w| w.as_secs() >= 1)
            .ok_or_else(|| {
                format!(
                    "`--window {kind}={value}`: expected a duration of at least 1s (30s, 1h, 1d)"
                )
            })?;
        types.entry(kind).or_default().window_secs = window.as_secs();
    }
    for (kind, value) in pairs("rate", rates)? {
        let rate: f64 = value
            .parse()
            .ok()
            .filter(|r: &f64| r.is_finite() && *r > 0.0)
            .ok_or_else(|| format!("`--rate {kind}={value}`: expected events per second > 0"))?;
        types.entry(kind).or_default().rate = Some(rate);
    }
    for (kind, value) in pairs("burst", bursts)? {
        let burst = value
            .parse()
            .ok()
            .filter(|b| *b >= 1)
            .ok_or_else(|| format!("`--burst {kind}={value}`: expected a whole number >= 1"))?;
        types.entry(kind).or_default().burst = Some(burst);
    }
    Ok(QuotaSettings { action, types })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        QuotaCli::command().debug_assert();
    }

    #[test]
    fn flags_become_settings() {
        let settings = settings_from_flags(
            &strings(&["events=1000", "recordings=5"]),
            &strings(&["events=1h"]),
            &strings(&["events=50"]),
            &[],
            Some(QuotaAction::Reject),
        )
        .expect("valid");
        let events = &settings.types[&QuotaType::Events];
        assert_eq!(events.limit, Some(1000));
        assert_eq!(events.window_secs, 3600);
        assert_eq!(events.rate, Some(50.0));
        assert_eq!(settings.types[&QuotaType::Recordings].window_secs, 86_400);
        assert_eq!(settings.action, Some(QuotaAction::Reject));
    }

    #[test]
    fn bad_flags_name_the_flag_and_what_it_takes() {
        let err = settings_from_flags(&strings(&["event=1"]), &[], &[], &[], None)
            .expect_err("unknown type");
        assert!(
            err.contains("--limit") && err.contains("events, recordings"),
            "{err}"
        );
        let err = settings_from_flags(&strings(&["events=-1"]), &[], &[], &[], None)
            .expect_err("negative");
        assert!(err.contains("whole number"), "{err}");
        let err = settings_from_flags(&[], &strings(&["events=0s"]), &[], &[], None)
            .expect_err("zero window");
        assert!(err.contains("at least 1s"), "{err}");
    }
}

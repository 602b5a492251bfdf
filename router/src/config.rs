//! The router's one configuration type, layered and validated once at start-up.
//!
//! Layers, later ones winning: built-in defaults → TOML file (`--config`) → environment →
//! command-line flags. Environment keys are the field names upper-cased behind the prefix
//! `GLMFLEET_ROUTER__` (double underscore; `__` also separates nested keys):
//!
//! ```text
//! GLMFLEET_ROUTER__PORT=9000
//! GLMFLEET_ROUTER__MAX_INFLIGHT_PER_REPLICA=64
//! GLMFLEET_ROUTER__REPLICAS='["http://10.0.0.5:8001","http://10.0.0.6:8001"]'
//! GLMFLEET_ROUTER__POLICY=least-loaded
//! ```
//!
//! Flags not given on the command line do not override lower layers (every [`RouterArgs`] field
//! is optional and skipped when absent). [`RouterConfig::validate`] rejects impossible values
//! with a message naming the key.

use std::path::PathBuf;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::fleet::Discovery;
use crate::policy::PolicyKind;

/// Prefix of the router's environment variables.
pub const ENV_PREFIX: &str = "GLMFLEET_ROUTER__";

/// Everything the router can be told.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Address the CLI binds (`serve` itself takes a bound listener). Default `127.0.0.1`.
    pub host: String,
    /// Port the CLI binds. Default 8000.
    pub port: u16,
    /// Static replicas, `http://HOST:PORT` each.
    pub replicas: Vec<String>,
    /// Discovery source, `dns:HOST:PORT` (re-resolved every `discover_interval_ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discover: Option<String>,
    /// Discovery period in milliseconds. Default 5000.
    pub discover_interval_ms: u64,
    /// Routing policy. Default `prefix-hash`.
    pub policy: PolicyKind,
    /// Load bound `c` of bounded-load consistent hashing (≥ 1) for requests that continue a
    /// remembered prefix; new prefixes are balanced strictly. Default 1.25.
    pub load_bound: f64,
    /// Bytes per prefix block of the routing key. Default 256.
    pub block_bytes: usize,
    /// Most prefix blocks hashed per request. Default 512 (128 KiB of prompt at 256 bytes).
    pub max_prefix_blocks: usize,
    /// Most block keys the prefix-hash policy remembers. Default 1,048,576 (≈ 24 MiB).
    pub affinity_capacity: usize,
    /// Hard cap of this router's in-flight requests per replica; beyond it on every replica the
    /// router answers 429. Default 512.
    pub max_inflight_per_replica: u64,
    /// KV usage (0..1] from `/load` at which a replica is avoided while others have room.
    /// Default 0.98.
    pub kv_pressure_threshold: f64,
    /// Health probe (`GET /health`) period in milliseconds. Default 1000.
    pub health_interval_ms: u64,
    /// Timeout of one probe or load poll in milliseconds. Default 2000.
    pub health_timeout_ms: u64,
    /// Consecutive failures (requests, or probes) that eject a replica. Default 3.
    pub eject_after_failures: u32,
    /// `/load` poll period in milliseconds; 0 disables polling. Default 200.
    pub load_poll_interval_ms: u64,
    /// Upstream TCP connect timeout in milliseconds. Default 3000: long enough for one SYN
    /// retransmission (1 s), so a burst that overflows a replica's accept backlog is not
    /// mistaken for a dead replica.
    pub connect_timeout_ms: u64,
    /// Time allowed until the first byte of the answer in milliseconds: the first event of a
    /// stream, or the whole answer of a non-stream request (whose headers come only when the
    /// generation is done). A replica over it is failed and the request retried. Default 300000.
    pub first_byte_timeout_ms: u64,
    /// Retries on other replicas for a request that failed before sending anything. Default 2.
    pub max_retries: u32,
    /// Largest request body in bytes (413 beyond). Default 32 MiB.
    pub max_body_bytes: usize,
    /// Time allowed to receive a whole request body once its head has arrived, in
    /// milliseconds; a body still incomplete then gets 408 (nothing is proxied) and the
    /// connection is closed. Default 30000 (as the header-read timeout).
    pub request_body_timeout_ms: u64,
    /// Largest non-stream response body relayed, in bytes (502 beyond). Default 64 MiB.
    pub max_response_bytes: usize,
    /// Graceful-shutdown budget in seconds for in-flight requests. Default 30.
    pub shutdown_timeout_secs: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            replicas: Vec::new(),
            discover: None,
            discover_interval_ms: 5_000,
            policy: PolicyKind::PrefixHash,
            load_bound: 1.25,
            block_bytes: 256,
            max_prefix_blocks: 512,
            affinity_capacity: 1 << 20,
            max_inflight_per_replica: 512,
            kv_pressure_threshold: 0.98,
            health_interval_ms: 1_000,
            health_timeout_ms: 2_000,
            eject_after_failures: 3,
            load_poll_interval_ms: 200,
            connect_timeout_ms: 3_000,
            first_byte_timeout_ms: 300_000,
            max_retries: 2,
            max_body_bytes: 32 << 20,
            request_body_timeout_ms: 30_000,
            max_response_bytes: 64 << 20,
            shutdown_timeout_secs: 30,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or a value has the wrong type.
    #[error("router config: {}", figment_one_line(.0))]
    Load(Box<figment::Error>),
    /// `--config` names a file that does not exist.
    #[error("router config file {0} does not exist")]
    MissingFile(PathBuf),
    /// A value is out of range or malformed.
    #[error("router config `{key}`: {message}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// What is wrong and what is expected.
        message: String,
    },
}

// Not `#[from]`: that would also make figment's error the `source`, and callers that print an
// error with its causes would print the message twice.
impl From<Box<figment::Error>> for ConfigError {
    fn from(e: Box<figment::Error>) -> Self {
        ConfigError::Load(e)
    }
}

/// figment's message as one line: a TOML syntax error carries a multi-line excerpt of the file
/// (`  |`, `1 | ...`, a caret line), which is dropped; the remaining lines are joined.
fn figment_one_line(e: &figment::Error) -> String {
    let text = e.to_string();
    let is_excerpt = |l: &str| {
        let rest = l
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .trim_start();
        rest.starts_with('|')
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !is_excerpt(l))
        .collect::<Vec<_>>()
        .join("; ")
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl RouterConfig {
    /// Check every value; replica URLs must be `http://HOST[:PORT]` with no path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.host.trim().is_empty() {
            return Err(invalid("host", "must not be empty"));
        }
        if self.replicas.is_empty() && self.discover.is_none() {
            return Err(invalid(
                "replicas",
                "no replicas: give --replica http://HOST:PORT (repeatable) or --discover dns:HOST:PORT",
            ));
        }
        let mut seen = Vec::new();
        for url in &self.replicas {
            let name = normalize_replica(url).map_err(|m| invalid("replicas", m))?;
            if seen.contains(&name) {
                return Err(invalid("replicas", format!("`{url}` is listed twice")));
            }
            seen.push(name);
        }
        if let Some(spec) = &self.discover {
            Discovery::parse(spec).map_err(|m| invalid("discover", m))?;
        }
        if !(self.load_bound.is_finite() && self.load_bound >= 1.0) {
            return Err(invalid(
                "load_bound",
                format!("{} must be a number ≥ 1 (e.g. 1.25)", self.load_bound),
            ));
        }
        if !(16..=1 << 20).contains(&self.block_bytes) {
            return Err(invalid("block_bytes", "must be between 16 and 1048576"));
        }
        if self.kv_pressure_threshold.is_nan()
            || self.kv_pressure_threshold <= 0.0
            || self.kv_pressure_threshold > 1.0
        {
            return Err(invalid("kv_pressure_threshold", "must be in (0, 1]"));
        }
        let positive: [(&'static str, u64); 11] = [
            ("max_prefix_blocks", self.max_prefix_blocks as u64),
            ("affinity_capacity", self.affinity_capacity as u64),
            ("max_inflight_per_replica", self.max_inflight_per_replica),
            ("health_interval_ms", self.health_interval_ms),
            ("health_timeout_ms", self.health_timeout_ms),
            ("eject_after_failures", u64::from(self.eject_after_failures)),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("first_byte_timeout_ms", self.first_byte_timeout_ms),
            ("max_body_bytes", self.max_body_bytes as u64),
            ("request_body_timeout_ms", self.request_body_timeout_ms),
            ("discover_interval_ms", self.discover_interval_ms),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(invalid(key, "must be greater than 0"));
        }
        if self.max_response_bytes == 0 {
            return Err(invalid("max_response_bytes", "must be greater than 0"));
        }
        Ok(())
    }

    /// The replica URLs in canonical form (validated first).
    pub fn replica_names(&self) -> Result<Vec<String>, ConfigError> {
        self.replicas
            .iter()
            .map(|u| normalize_replica(u).map_err(|m| invalid("replicas", m)))
            .collect()
    }
}

/// `http://host:port` (trailing slash removed; port 80 made explicit).
fn normalize_replica(url: &str) -> Result<String, String> {
    let uri: http::Uri = url
        .trim()
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "`{url}`: https replicas are not supported; use http://"
            ))
        }
        _ => return Err(format!("`{url}` must start with http://")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("`{url}` has no host"))?;
    if authority.host().is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    if authority.as_str().contains('@') {
        return Err(format!(
            "`{url}`: credentials in replica URLs are not supported"
        ));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "`{url}` must not have a path or query (give http://HOST:PORT)"
        ));
    }
    let port = authority.port_u16().unwrap_or(80);
    Ok(format!("http://{}:{port}", authority.host()))
}

/// Command-line flags of `glmfleet router`. Every field is optional so that an absent flag
/// leaves the file and environment layers alone.
#[derive(Clone, Debug, Default, PartialEq, clap::Args, Serialize)]
pub struct RouterArgs {
    /// TOML file with router settings (keys as in `RouterConfig`).
    #[arg(long, value_name = "PATH")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to bind [default: 127.0.0.1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Port to bind [default: 8000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// A replica base URL, e.g. http://127.0.0.1:8001 (repeatable).
    #[arg(long = "replica", value_name = "URL")]
    #[serde(rename = "replicas", skip_serializing_if = "Vec::is_empty")]
    pub replica: Vec<String>,
    /// Discover replicas by re-resolving a DNS name: dns:HOST:PORT.
    #[arg(long, value_name = "dns:HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discover: Option<String>,
    /// Discovery period in ms [default: 5000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discover_interval_ms: Option<u64>,
    /// Routing policy [default: prefix-hash].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyKind>,
    /// Load bound c of bounded-load consistent hashing, for requests that continue a remembered
    /// prefix (new prefixes are balanced strictly) [default: 1.25].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_bound: Option<f64>,
    /// Bytes per prefix block of the routing key [default: 256].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_bytes: Option<usize>,
    /// Most prefix blocks hashed per request [default: 512].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_prefix_blocks: Option<usize>,
    /// Most prefix block keys remembered [default: 1048576].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity_capacity: Option<usize>,
    /// Hard cap of in-flight requests per replica (429 beyond, on all) [default: 512].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_inflight_per_replica: Option<u64>,
    /// KV usage at which a replica is avoided [default: 0.98].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_pressure_threshold: Option<f64>,
    /// Health probe period in ms [default: 1000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_interval_ms: Option<u64>,
    /// Probe and load-poll timeout in ms [default: 2000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_timeout_ms: Option<u64>,
    /// Consecutive failures that eject a replica [default: 3].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eject_after_failures: Option<u32>,
    /// /load poll period in ms, 0 to disable [default: 200].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_poll_interval_ms: Option<u64>,
    /// Upstream connect timeout in ms [default: 3000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// Time to the first byte of the answer in ms [default: 300000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_byte_timeout_ms: Option<u64>,
    /// Retries on other replicas before anything was sent [default: 2].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Largest request body in bytes [default: 33554432].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
    /// Time to receive a request body in ms (408 beyond) [default: 30000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_body_timeout_ms: Option<u64>,
    /// Largest non-stream response relayed in bytes [default: 67108864].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<usize>,
    /// Graceful-shutdown budget in seconds [default: 30].
    #[arg(long = "shutdown-timeout", value_name = "SECS")]
    #[serde(
        rename = "shutdown_timeout_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub shutdown_timeout: Option<u64>,
}

/// Layer defaults, the `--config` file, `GLMFLEET_ROUTER__*` variables and flags; validate.
pub fn load_config(args: RouterArgs) -> Result<RouterConfig, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(RouterConfig::default()));
    if let Some(path) = &args.config {
        if !path.is_file() {
            return Err(ConfigError::MissingFile(path.clone()));
        }
        figment = figment.merge(Toml::file(path));
    }
    let config: RouterConfig = figment
        .merge(Env::prefixed(ENV_PREFIX).split("__"))
        .merge(Serialized::defaults(&args))
        .extract()
        .map_err(Box::new)?;
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
#[expect(
    clippy::result_large_err,
    reason = "figment::Jail closures return figment::Error, whose size is figment's choice"
)]
mod tests {
    use clap::Parser;
    use figment::Jail;

    use super::*;

    #[test]
    fn figment_errors_are_one_line_and_not_repeated() {
        // Regression: a TOML syntax error printed a multi-line excerpt of the file, and the
        // CLI's "error and its causes" line printed figment's message twice.
        use figment::providers::{Format, Toml};
        for text in ["max_num_seqs = [unclosed", "max_num_seqs = \"many\""] {
            let err = figment::Figment::from(Toml::string(text))
                .extract::<RouterConfig>()
                .map_err(Box::new)
                .map_err(ConfigError::from)
                .unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("router config: "), "{msg}");
            assert!(!msg.contains('\n'), "not one line: {msg}");
            assert!(!msg.contains(" | "), "file excerpt kept: {msg}");
            assert!(std::error::Error::source(&err).is_none());
        }
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RouterArgs,
    }

    fn parse(flags: &[&str]) -> RouterArgs {
        let mut argv = vec!["router"];
        argv.extend_from_slice(flags);
        Cli::parse_from(argv).args
    }

    #[test]
    fn layers_apply_in_order() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "router.toml",
                r#"
                    replicas = ["http://10.0.0.1:8001"]
                    port = 7000
                    load_bound = 1.5
                    max_retries = 5
                "#,
            )?;
            jail.set_env("GLMFLEET_ROUTER__PORT", "7100");
            jail.set_env("GLMFLEET_ROUTER__MAX_INFLIGHT_PER_REPLICA", "64");
            jail.set_env("GLMFLEET_ROUTER__POLICY", "least-loaded");
            let args = parse(&[
                "--config",
                "router.toml",
                "--port",
                "7200",
                "--max-retries",
                "1",
            ]);
            let cfg = load_config(args).map_err(|e| e.to_string())?;
            assert_eq!(cfg.port, 7200, "flag beats env beats file");
            assert_eq!(cfg.max_inflight_per_replica, 64, "env beats default");
            assert_eq!(cfg.policy, PolicyKind::LeastLoaded);
            assert_eq!(cfg.load_bound, 1.5, "file beats default");
            assert_eq!(cfg.max_retries, 1);
            assert_eq!(cfg.replicas, vec!["http://10.0.0.1:8001"]);
            assert_eq!(cfg.block_bytes, 256, "untouched default");
            Ok(())
        });
    }

    #[test]
    fn flags_cover_every_documented_option() {
        Jail::expect_with(|_| {
            let args = parse(&[
                "--host",
                "0.0.0.0",
                "--port",
                "8100",
                "--replica",
                "http://a:1",
                "--replica",
                "http://b:2/",
                "--discover",
                "dns:svc:8001",
                "--policy",
                "power-of-two",
                "--load-bound",
                "2",
                "--block-bytes",
                "64",
                "--max-inflight-per-replica",
                "9",
                "--health-interval-ms",
                "50",
                "--load-poll-interval-ms",
                "0",
                "--connect-timeout-ms",
                "10",
                "--first-byte-timeout-ms",
                "20",
                "--max-retries",
                "0",
                "--max-body-bytes",
                "100",
                "--request-body-timeout-ms",
                "250",
                "--shutdown-timeout",
                "3",
            ]);
            let cfg = load_config(args).map_err(|e| e.to_string())?;
            assert_eq!(cfg.host, "0.0.0.0");
            assert_eq!(cfg.replicas, vec!["http://a:1", "http://b:2/"]);
            assert_eq!(
                cfg.replica_names().unwrap(),
                vec!["http://a:1", "http://b:2"]
            );
            assert_eq!(cfg.discover.as_deref(), Some("dns:svc:8001"));
            assert_eq!(cfg.policy, PolicyKind::PowerOfTwo);
            assert_eq!(cfg.load_bound, 2.0);
            assert_eq!(cfg.block_bytes, 64);
            assert_eq!(cfg.max_inflight_per_replica, 9);
            assert_eq!(cfg.health_interval_ms, 50);
            assert_eq!(cfg.load_poll_interval_ms, 0);
            assert_eq!(cfg.connect_timeout_ms, 10);
            assert_eq!(cfg.first_byte_timeout_ms, 20);
            assert_eq!(cfg.max_retries, 0);
            assert_eq!(cfg.max_body_bytes, 100);
            assert_eq!(cfg.request_body_timeout_ms, 250);
            assert_eq!(cfg.shutdown_timeout_secs, 3);
            Ok(())
        });
    }

    #[test]
    fn env_lists_and_errors_name_the_key() {
        Jail::expect_with(|jail| {
            jail.set_env(
                "GLMFLEET_ROUTER__REPLICAS",
                r#"["http://a:1","http://b:2"]"#,
            );
            let cfg = load_config(RouterArgs::default()).map_err(|e| e.to_string())?;
            assert_eq!(cfg.replicas.len(), 2);
            jail.set_env("GLMFLEET_ROUTER__MAX_RETRIES", "many");
            let err = load_config(RouterArgs::default()).unwrap_err().to_string();
            assert!(err.to_lowercase().contains("max_retries"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn validation_messages_are_clear() {
        let err = |cfg: RouterConfig| cfg.validate().unwrap_err().to_string();
        let base = RouterConfig {
            replicas: vec!["http://127.0.0.1:8001".into()],
            ..RouterConfig::default()
        };
        assert!(base.validate().is_ok());
        assert!(err(RouterConfig::default()).contains("--replica"));
        let with = |f: &dyn Fn(&mut RouterConfig)| {
            let mut c = base.clone();
            f(&mut c);
            err(c)
        };
        assert!(with(&|c| c.load_bound = 0.9).contains("load_bound"));
        assert!(with(&|c| c.load_bound = f64::NAN).contains("load_bound"));
        assert!(with(&|c| c.replicas = vec!["https://x:1".into()]).contains("https"));
        assert!(with(&|c| c.replicas = vec!["10.0.0.1:80".into()]).contains("http://"));
        assert!(with(&|c| c.replicas = vec!["http://x:1/v1".into()]).contains("path"));
        assert!(with(&|c| c.replicas.push("http://127.0.0.1:8001/".into())).contains("twice"));
        assert!(with(&|c| c.discover = Some("k8s:svc".into())).contains("discover"));
        assert!(with(&|c| c.max_inflight_per_replica = 0).contains("max_inflight_per_replica"));
        assert!(with(&|c| c.block_bytes = 1).contains("block_bytes"));
        assert!(with(&|c| c.request_body_timeout_ms = 0).contains("request_body_timeout_ms"));
        assert!(with(&|c| c.kv_pressure_threshold = 1.5).contains("kv_pressure_threshold"));
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let args = RouterArgs {
            config: Some("/nonexistent/router.toml".into()),
            ..RouterArgs::default()
        };
        assert!(matches!(
            load_config(args),
            Err(ConfigError::MissingFile(_))
        ));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        Jail::expect_with(|jail| {
            jail.create_file("r.toml", "replicas = [\"http://a:1\"]\nload_bund = 2.0\n")?;
            let args = RouterArgs {
                config: Some("r.toml".into()),
                ..RouterArgs::default()
            };
            let err = load_config(args).unwrap_err().to_string();
            assert!(err.contains("load_bund"), "{err}");
            Ok(())
        });
    }
}

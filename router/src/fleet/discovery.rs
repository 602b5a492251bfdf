//! Where replicas come from besides the static list: a DNS name re-resolved periodically.
//!
//! `dns:HOST:PORT` fits a Kubernetes headless Service: its A/AAAA records are the ready pods.
//! Every resolved address becomes the replica `http://ADDR:PORT`. A failed lookup keeps the
//! previous set (a DNS hiccup must not empty the fleet); a successful lookup with no addresses
//! removes the discovered replicas. The router only ever proxies to addresses obtained here or
//! given in the config, never to a host named by a request.

use std::fmt;

/// A discovery source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discovery {
    /// Resolve `host` and use every address with `port`.
    Dns {
        /// Name to resolve.
        host: String,
        /// Replica port.
        port: u16,
    },
}

impl Discovery {
    /// Parse `dns:HOST:PORT`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let rest = spec
            .strip_prefix("dns:")
            .ok_or_else(|| format!("`{spec}` must look like dns:HOST:PORT"))?;
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("`{spec}` has no port (dns:HOST:PORT)"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{port}` in `{spec}` is not a port number"))?;
        if host.is_empty() || port == 0 {
            return Err(format!("`{spec}` needs a host name and a non-zero port"));
        }
        Ok(Self::Dns {
            host: host.to_owned(),
            port,
        })
    }

    /// Resolve to replica base URLs, sorted and without duplicates.
    pub async fn resolve(&self) -> std::io::Result<Vec<String>> {
        match self {
            Self::Dns { host, port } => {
                let mut names: Vec<String> = tokio::net::lookup_host((host.as_str(), *port))
                    .await?
                    .map(|addr| format!("http://{addr}"))
                    .collect();
                names.sort();
                names.dedup();
                Ok(names)
            }
        }
    }
}

impl fmt::Display for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns { host, port } => write!(f, "dns:{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dns_specs() {
        assert_eq!(
            Discovery::parse("dns:glm-replicas.default.svc:8001").unwrap(),
            Discovery::Dns {
                host: "glm-replicas.default.svc".into(),
                port: 8001
            }
        );
        assert!(Discovery::parse("glm:8001").is_err());
        assert!(Discovery::parse("dns:host").is_err());
        assert!(Discovery::parse("dns::80").is_err());
        assert!(Discovery::parse("dns:host:0").is_err());
        assert!(Discovery::parse("dns:host:http").is_err());
    }

    #[tokio::test]
    async fn resolves_localhost() {
        let d = Discovery::parse("dns:localhost:8123").unwrap();
        let names = d.resolve().await.unwrap();
        assert!(
            names.iter().any(|n| n == "http://127.0.0.1:8123"),
            "{names:?}"
        );
    }
}

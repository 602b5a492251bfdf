//! Metrics of a running `glmfleet up` fleet against what operations rely on:
//!
//! * every metric name the dashboards and alerts query (`ops/ci/metric-names.sh`) is exported by
//!   the router or a replica after ordinary traffic. Matching is exact on series names as they
//!   appear in the exposition: counters carry `_total` there, histograms appear as `_bucket`,
//!   `_sum` and `_count` (and the script prints them that way, e.g. `..._seconds_bucket`), so no
//!   suffix is added or stripped on either side;
//! * every metric of the contracts `ops/metrics-router.txt` / `ops/metrics-replica.txt` exists
//!   with its declared type, and each of its series carries the declared labels (the queries
//!   group and filter by them);
//! * `promtool check metrics` accepts both expositions, with only the findings vLLM's naming
//!   implies (`:` in names, the `vllm:iteration_tokens_total` histogram) — when promtool exists;
//! * a real Prometheus (`ops/prometheus/run-local.sh`) scrapes the fleet and its HTTP API returns
//!   the fleet's series — when the `prometheus` binary exists (CI installs it), else a SKIP notice.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::http::{self, chat, SseStream};
use e2e::prom::Exposition;
use e2e::{dead_port, repo_root, wait_until, Proc};
use serde_json::Value;

/// Two replicas with MTP speculation on (the demo model has the layer), so the speculative
/// decoding series the dashboards chart exist too.
fn start_up() -> Proc {
    Proc::start(
        &[
            "up",
            "--port",
            "0",
            "--replicas",
            "2",
            "--",
            "--speculative-config",
            r#"{"method": "mtp", "num_speculative_tokens": 1}"#,
        ],
        "router",
        Duration::from_secs(120),
    )
}

/// The replicas' base URLs, from the router.
fn replica_urls(router: &str) -> Vec<String> {
    http::get_json(&format!("{router}/replicas"))["replicas"]
        .as_array()
        .expect("replicas list")
        .iter()
        .map(|r| r["name"].as_str().expect("name").to_owned())
        .collect()
}

/// Ordinary traffic through the router: streams and whole answers.
fn traffic(router: &str, n: usize) {
    let url = format!("{router}/v1/chat/completions");
    for i in 0..n {
        let user = format!("Metrics request {i}");
        if i % 2 == 0 {
            let r = http::post_json(&url, &chat("", &user, 8, false)).expect("request");
            assert_eq!(r.status, 200, "{}", r.body);
        } else {
            let s = SseStream::open(&url, &chat("", &user, 8, true)).expect("stream");
            assert_eq!(s.status, 200);
            let end = s.finish(Duration::ZERO);
            assert!(end.done, "{end:?}");
        }
    }
}

/// `ops/ci/metric-names.sh`: the names the dashboards and alerts use.
fn dashboard_names() -> Vec<String> {
    let out = Command::new("bash")
        .arg(repo_root().join("ops/ci/metric-names.sh"))
        .stdin(Stdio::null())
        .output()
        .expect("run ops/ci/metric-names.sh");
    assert!(
        out.status.success(),
        "ops/ci/metric-names.sh failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(names.len() >= 10, "metric-names.sh printed only {names:?}");
    names
}

/// `(name, type, labels)` rows of an `ops/metrics-*.txt` contract.
fn contract(file: &str) -> Vec<(String, String, Vec<String>)> {
    let text = std::fs::read_to_string(repo_root().join("ops").join(file)).expect("contract file");
    let rows: Vec<_> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            assert!(cols.len() >= 3, "{file}: malformed row {l:?}");
            let labels = if cols[2] == "-" {
                Vec::new()
            } else {
                cols[2].split(',').map(str::to_owned).collect()
            };
            (cols[0].to_owned(), cols[1].to_owned(), labels)
        })
        .collect();
    assert!(!rows.is_empty(), "{file} lists no metric");
    rows
}

fn check_contract(file: &str, what: &str, exposition: &Exposition) {
    for (name, kind, labels) in contract(file) {
        let declared = exposition.types.get(&name).map(String::as_str);
        assert_eq!(
            declared,
            Some(kind.as_str()),
            "{what}: {name} should be a {kind} ({file})"
        );
        let series_names: Vec<String> = if kind == "histogram" {
            ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{name}{s}"))
                .collect()
        } else {
            vec![name.clone()]
        };
        let series: Vec<_> = exposition
            .samples
            .iter()
            .filter(|x| series_names.contains(&x.name))
            .collect();
        assert!(!series.is_empty(), "{what}: {name} has no series");
        for s in series {
            for l in &labels {
                assert!(
                    s.labels.contains_key(l),
                    "{what}: series {} {:?} lacks label `{l}` ({file})",
                    s.name,
                    s.labels
                );
            }
        }
    }
}

/// `promtool check metrics`, allowing only the findings vLLM's names imply (the approach of
/// replica/tests/http/observability.rs). Returns false when promtool is not installed.
fn promtool_check(what: &str, text: &str) -> bool {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!(
            "NOTICE: promtool not installed; skipping `promtool check metrics` of the {what}"
        );
        return false;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // 0: clean; 3: lint findings only; anything else: the exposition did not parse.
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "promtool could not parse the {what}'s metrics:\n{report}"
    );
    for line in report.lines().filter(|l| !l.trim().is_empty()) {
        let allowed = line.ends_with("metric names should not contain ':'")
            || line == "vllm:iteration_tokens_total non-counter metrics should not have \"_total\" suffix";
        assert!(allowed, "unexpected promtool finding on the {what}: {line}");
    }
    true
}

#[test]
fn dashboard_metrics_are_exported_as_declared() {
    let up = start_up();
    let router = up.url();
    traffic(&router, 6);
    let router_text = http::get_text(&format!("{router}/metrics"));
    let router_metrics = Exposition::parse(&router_text);
    let replicas = replica_urls(&router);
    assert_eq!(replicas.len(), 2);
    // Which replica the router chose is a hash of the prompts: one request straight to each
    // replica makes sure both have served (their per-reason series exist once observed).
    for r in &replicas {
        let url = format!("{r}/v1/chat/completions");
        let resp = http::post_json(&url, &chat("", "Direct request", 4, false)).expect("request");
        assert_eq!(resp.status, 200, "{}", resp.body);
    }
    let replica_texts: Vec<String> = replicas
        .iter()
        .map(|r| http::get_text(&format!("{r}/metrics")))
        .collect();
    let replica_metrics: Vec<Exposition> =
        replica_texts.iter().map(|t| Exposition::parse(t)).collect();

    let mut exported: BTreeSet<String> = router_metrics.names();
    for r in &replica_metrics {
        exported.extend(r.names());
    }
    let wanted = dashboard_names();
    let missing: Vec<&String> = wanted.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "used by dashboards/alerts but not exported: {missing:?}"
    );

    check_contract("metrics-router.txt", "router", &router_metrics);
    for (i, r) in replica_metrics.iter().enumerate() {
        check_contract("metrics-replica.txt", &format!("replica {i}"), r);
    }
    // The traffic shows up where the dashboards look for it.
    let served = router_metrics.sum("glmfleet_router_requests_total", &[("status", "200")]);
    assert_eq!(served, 6.0, "router requests_total{{status=\"200\"}}");
    let generated: f64 = replica_metrics
        .iter()
        .map(|r| r.sum("vllm:generation_tokens_total", &[]))
        .sum();
    assert!(generated > 0.0, "no generation tokens counted");

    let checked =
        promtool_check("router", &router_text) & promtool_check("replica", &replica_texts[0]);
    eprintln!(
        "metrics: {} dashboard/alert names all exported ({} series names in the fleet's expositions); \
         contracts hold; promtool {}",
        wanted.len(),
        exported.len(),
        if checked { "clean" } else { "not installed" }
    );
}

/// A Prometheus started by `ops/prometheus/run-local.sh`, killed on drop.
struct Prometheus {
    url: String,
    pid: i32,
    dir: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: the pid of the Prometheus this test started (printed by run-local.sh).
        unsafe {
            libc::kill(self.pid, libc::SIGTERM);
        }
        let _ = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
            e2e::proc_stat(self.pid as u32).is_none_or(|(s, _)| s == 'Z')
        });
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn query(prom: &Prometheus, q: &str) -> Vec<Value> {
    let v = http::get_json(&format!("{}/api/v1/query?query={}", prom.url, encode(q)));
    assert_eq!(v["status"], "success", "query {q}: {v}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

#[test]
fn prometheus_scrapes_the_fleet() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP: the `prometheus` binary is not installed (ops/ci/install-deps.sh installs it); not scraping");
        return;
    }
    let started = Instant::now();
    let up = start_up();
    let router = up.url();
    traffic(&router, 4);
    let replicas = replica_urls(&router);
    let dir = std::env::temp_dir().join(format!("glmfleet-e2e-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = dead_port().to_string();
    let mut args = vec![
        repo_root()
            .join("ops/prometheus/run-local.sh")
            .display()
            .to_string(),
        "--router".into(),
        up.addr.to_string(),
        "--port".into(),
        port,
        "--dir".into(),
        dir.display().to_string(),
    ];
    for r in &replicas {
        args.extend([
            "--replica".into(),
            r.trim_start_matches("http://").to_owned(),
        ]);
    }
    let out = Command::new("bash")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("run-local.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let var = |k: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_owned)
    };
    // Owned (and so stopped) even if run-local.sh failed after starting it.
    let pid = var("PROMETHEUS_PID").and_then(|p| p.parse().ok());
    assert!(
        out.status.success(),
        "run-local.sh failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prom = Prometheus {
        url: var("PROMETHEUS_URL").expect("PROMETHEUS_URL"),
        pid: pid.expect("PROMETHEUS_PID"),
        dir: var("PROMETHEUS_DIR").expect("PROMETHEUS_DIR"),
    };

    // Scrape every second instead of every 5 s: rewrite the copied config and reload (SIGHUP).
    let cfg_path = format!("{}/prometheus/prometheus.yml", prom.dir);
    let cfg = std::fs::read_to_string(&cfg_path).expect("prometheus.yml");
    let fast = cfg
        .replace("scrape_interval: 5s", "scrape_interval: 1s")
        .replace("scrape_timeout: 4s", "scrape_timeout: 1s");
    assert_ne!(
        fast, cfg,
        "ops/prometheus/prometheus-local.yml no longer sets a 5s scrape interval"
    );
    std::fs::write(&cfg_path, fast).expect("write prometheus.yml");
    // SAFETY: the pid of the Prometheus this test started.
    unsafe {
        libc::kill(prom.pid, libc::SIGHUP);
    }
    let reloaded = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        http::get_json(&format!("{}/api/v1/status/config", prom.url))["data"]["yaml"]
            .as_str()
            .is_some_and(|y| y.contains("scrape_interval: 1s"))
    });
    assert!(reloaded, "Prometheus did not reload its configuration");

    // Every target up, and the fleet's series queryable.
    let all_up = wait_until(Duration::from_secs(15), Duration::from_millis(250), || {
        let up = query(&prom, r#"up{job=~"glmfleet-.*"} == 1"#);
        up.len() == 1 + replicas.len()
    });
    assert!(
        all_up,
        "targets not all up: {:?}",
        query(&prom, r#"up{job=~"glmfleet-.*"}"#)
    );
    traffic(&router, 4);
    let mut series = (Vec::new(), Vec::new());
    let seen = wait_until(Duration::from_secs(10), Duration::from_millis(250), || {
        series = (
            query(
                &prom,
                r#"sum by (instance) (glmfleet_router_requests_total{job="glmfleet-router", status="200"})"#,
            ),
            query(
                &prom,
                r#"sum by (instance) (vllm:generation_tokens_total{job="glmfleet-replica"})"#,
            ),
        );
        let routed = series
            .0
            .first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok());
        routed == Some(8.0) && series.1.len() == replicas.len()
    });
    assert!(
        seen,
        "fleet series not in Prometheus: router {:?}, replicas {:?}",
        series.0, series.1
    );

    // And every name the dashboards and alerts use has series there (the ops script).
    let check = Command::new("bash")
        .arg(repo_root().join("ops/prometheus/assert-series.sh"))
        .args([&prom.url, "--wait", "10"])
        .stdin(Stdio::null())
        .output()
        .expect("assert-series.sh");
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "assert-series.sh: {report}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    eprintln!(
        "prometheus: {} targets up, router requests {:?}, replica series {}; assert-series: {}; {:?} in all",
        1 + replicas.len(),
        series.0.first().map(|s| &s["value"][1]),
        series.1.len(),
        report.lines().last().unwrap_or(""),
        started.elapsed()
    );
}

//! `glmfleet up`: a whole fleet on this machine: N `glmfleet serve` child processes on ephemeral loopback
//! ports and the router in this process in front of them. A replica that dies is restarted on its port
//! (the router ejects it meanwhile and re-admits it when its health check passes). Ctrl-C or SIGTERM
//! drains the router, then stops every replica with SIGTERM so in-flight requests finish.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Number of replicas.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// The router's port (the fleet's one endpoint).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Checkpoint folder or Hugging Face repo id (default: the embedded demo model).
    #[arg(long)]
    pub model: Option<String>,
    /// Routing policy: prefix-hash, round-robin, least-loaded, power-of-two.
    #[arg(long, default_value = "prefix-hash")]
    pub policy: String,
    /// Seconds a replica may take to load before `up` gives up.
    #[arg(long, default_value_t = 900)]
    pub startup_timeout: u64,
    /// Seconds in-flight requests get to finish at shutdown.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// GPUs for the replicas, one each, in order (e.g. `0,1,2,3`): replica i runs with
    /// `CUDA_VISIBLE_DEVICES` set to the i-th. Unset: replicas inherit the environment.
    #[arg(long, value_delimiter = ',')]
    pub gpus: Vec<String>,
    /// Flags passed to every replica, after `--` (e.g. `-- --max-num-seqs 64 --load-format fake`).
    #[arg(last = true)]
    pub serve_args: Vec<String>,
}

#[derive(Parser)]
struct RouterArgv {
    #[command(flatten)]
    args: router::RouterArgs,
}

struct Replica {
    index: usize,
    addr: SocketAddr,
    child: Child,
}

fn serve_command(args: &UpArgs, index: usize, port: u16) -> Result<Command> {
    let exe = std::env::current_exe().context("locating the glmfleet binary")?;
    let mut c = Command::new(exe);
    if let Some(gpu) = args.gpus.get(index) {
        c.env("CUDA_VISIBLE_DEVICES", gpu);
    }
    c.arg("serve")
        .arg(args.model.as_deref().unwrap_or(crate::demo::DEMO))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--shutdown-timeout", &args.shutdown_timeout.to_string()])
        .args(&args.serve_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    // If `up` dies without stopping its replicas (SIGKILL, the OOM killer), they get SIGTERM
    // instead of living on as orphans that hold their ports (and any descriptor `up` inherited).
    #[cfg(target_os = "linux")]
    // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        let parent = libc::getpid();
        c.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // `up` may have died before the prctl took effect
            if libc::getppid() != parent {
                return Err(std::io::Error::other("glmfleet up exited"));
            }
            Ok(())
        });
    }
    Ok(c)
}

/// Starts one replica and waits for its `listening` announcement.
async fn start_replica(args: &UpArgs, index: usize, port: u16) -> Result<Replica> {
    let mut child = serve_command(args, index, port)?
        .spawn()
        .context("starting a replica")?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("replica stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let wait = async {
        while let Some(line) = lines.next_line().await? {
            if let Some(addr) = crate::parse_announce(&line, "replica") {
                return Ok::<_, anyhow::Error>(Some(addr));
            }
        }
        Ok(None)
    };
    let addr = match tokio::time::timeout(Duration::from_secs(args.startup_timeout), wait).await {
        Ok(Ok(Some(a))) => a,
        Ok(Ok(None)) => {
            let status = child.wait().await.ok();
            bail!(
                "replica {index} exited before listening ({})",
                status.map(|s| s.to_string()).unwrap_or_default()
            )
        }
        Ok(Err(e)) => bail!("replica {index}: {e}"),
        Err(_) => bail!(
            "replica {index} did not listen within {}s",
            args.startup_timeout
        ),
    };
    // keep draining its stdout so it never blocks on a full pipe
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Replica { index, addr, child })
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        // SAFETY: plain syscall on a pid we spawned and still own (not yet reaped).
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
}

pub fn run(args: UpArgs) -> Result<()> {
    if args.replicas == 0 {
        bail!("--replicas must be at least 1");
    }
    if !args.gpus.is_empty() && args.gpus.len() < args.replicas {
        bail!(
            "--gpus lists {} GPUs for {} replicas: each replica needs its own",
            args.gpus.len(),
            args.replicas
        );
    }
    // Once, before the replicas race for it: materialises the demo, downloads a hub model, and
    // turns a missing folder into one error here instead of one per replica.
    crate::model_source::resolve(args.model.as_deref())?;
    let rt = crate::runtime()?;
    rt.block_on(async move {
        // before any child exists: a signal during start-up still stops everything cleanly
        let shutdown = crate::shutdown_signal();
        let mut started = Vec::with_capacity(args.replicas);
        let starts = (0..args.replicas).map(|i| start_replica(&args, i, 0));
        for r in futures_util::future::join_all(starts).await {
            started.push(r?);
        }
        let urls: Vec<String> = started
            .iter()
            .map(|r| format!("http://{}", r.addr))
            .collect();
        let mut argv = vec![
            "router".to_string(),
            "--host".into(),
            args.host.clone(),
            "--port".into(),
            args.port.to_string(),
        ];
        argv.extend(["--policy".into(), args.policy.clone()]);
        argv.extend([
            "--shutdown-timeout".into(),
            args.shutdown_timeout.to_string(),
        ]);
        for u in &urls {
            argv.extend(["--replica".into(), u.clone()]);
        }
        let rargs = RouterArgv::try_parse_from(&argv)
            .map_err(|e| anyhow!("router flags: {e}"))?
            .args;
        let rcfg = router::load_config(rargs)?;
        let addr = format!("{}:{}", rcfg.host, rcfg.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow!("cannot listen on {addr}: {e}"))?;
        crate::announce("router", listener.local_addr()?);
        eprintln!(
            "glmfleet up: router http://{} -> {}",
            listener.local_addr()?,
            urls.join(", ")
        );

        let stopping = Arc::new(AtomicBool::new(false));
        let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let supervisors: Vec<_> = started
            .into_iter()
            .map(|r| {
                tokio::spawn(supervise(
                    r,
                    args.clone(),
                    stopping.clone(),
                    stop_tx.subscribe(),
                ))
            })
            .collect();
        router::serve(rcfg, listener, shutdown).await?;
        // the router has drained; now the replicas
        stopping.store(true, Ordering::SeqCst);
        let _ = stop_tx.send(());
        for s in supervisors {
            let _ = s.await;
        }
        Ok(())
    })
}

/// Restarts a replica that dies on its own, on the same port; stops it with SIGTERM at shutdown.
async fn supervise(
    mut r: Replica,
    args: UpArgs,
    stopping: Arc<AtomicBool>,
    mut stop: tokio::sync::broadcast::Receiver<()>,
) {
    loop {
        tokio::select! {
            status = r.child.wait() => {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                eprintln!("glmfleet up: replica {} ({}) exited ({}); restarting", r.index, r.addr,
                    status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()));
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    match start_replica(&args, r.index, r.addr.port()).await {
                        Ok(n) => { r = n; break; }
                        Err(e) => eprintln!("glmfleet up: restarting replica {}: {e}", r.index),
                    }
                }
            }
            _ = stop.recv() => {
                terminate(&r.child);
                let grace = Duration::from_secs(args.shutdown_timeout + 5);
                if tokio::time::timeout(grace, r.child.wait()).await.is_err() {
                    let _ = r.child.kill().await;
                }
                return;
            }
        }
    }
}

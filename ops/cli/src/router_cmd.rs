//! `glmfleet router`: the fleet's front door in front of `--replica URL`s or a discovered DNS name.

use anyhow::{anyhow, Result};

pub fn run(args: router::RouterArgs) -> Result<()> {
    let cfg = router::load_config(args)?;
    let rt = crate::runtime()?;
    rt.block_on(async move {
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow!("cannot listen on {addr}: {e}"))?;
        let shutdown = crate::shutdown_signal();
        crate::announce("router", listener.local_addr()?);
        router::serve(cfg, listener, shutdown).await?;
        Ok(())
    })
}

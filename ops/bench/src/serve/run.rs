//! Running a plan: vLLM's pre-run lines, the optional ready check and warm-up, paced request
//! release under the concurrency limit, the progress bar, and the metrics of what came back.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::Semaphore;

use super::plan::RunPlan;
use crate::client::{HttpClient, RequestInput};
use crate::dataset::SampleRequest;
use crate::metrics::{calculate_metrics, error_counts, resolve_output_len, RequestRecord};
use crate::pacing::arrival_offsets;
use crate::result::{format_date, BenchResult};
use crate::BenchError;

fn input_for<'a>(plan: &'a RunPlan, req: &'a SampleRequest) -> RequestInput<'a> {
    RequestInput {
        model: &plan.model_name,
        prompt: &req.prompt,
        prompt_len: req.prompt_len,
        output_len: req.expected_output_len,
        ignore_eos: plan.ignore_eos,
        logprobs: plan.logprobs,
        extra_body: &plan.extra_body,
        request_id: Some(&req.request_id),
    }
}

/// Sends the first request until it succeeds or the timeout passes (vLLM's ready check).
async fn wait_ready(client: &HttpClient, plan: &RunPlan) -> Result<(), BenchError> {
    let deadline = Instant::now() + plan.ready_check_timeout;
    let first = &plan.requests[0];
    loop {
        let rec = client
            .send(plan.backend, &plan.api_uri, &input_for(plan, first))
            .await;
        if rec.success {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Server(format!(
                "endpoint not ready after {} s: {}",
                plan.ready_check_timeout.as_secs(),
                rec.error
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn progress_bar(len: usize, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{percent:>3}%|{wide_bar}| {pos}/{len} [{elapsed_precise}<{eta_precise}]",
    ) {
        pb.set_style(style);
    }
    pb
}

/// Runs the plan against the server and computes the result (prints nothing but vLLM's
/// pre-run lines and the progress bar).
pub(crate) async fn execute(
    client: &HttpClient,
    plan: Arc<RunPlan>,
) -> Result<BenchResult, BenchError> {
    if plan.ready_check_timeout > Duration::ZERO {
        println!("Starting initial single prompt test run...");
        wait_ready(client, &plan).await?;
        println!("Initial test run completed.");
    } else {
        println!("Skipping endpoint ready check.");
    }
    let semaphore = plan.max_concurrency.map(|c| Arc::new(Semaphore::new(c)));
    if plan.num_warmups > 0 {
        println!("Warming up with {} requests...", plan.num_warmups);
        let mut warm = Vec::new();
        for _ in 0..plan.num_warmups {
            let (client, plan, sem) = (client.clone(), plan.clone(), semaphore.clone());
            warm.push(tokio::spawn(async move {
                let _permit = match &sem {
                    Some(s) => Some(s.clone().acquire_owned().await),
                    None => None,
                };
                client
                    .send(
                        plan.backend,
                        &plan.api_uri,
                        &input_for(&plan, &plan.requests[0]),
                    )
                    .await
            }));
        }
        for w in warm {
            let _ = w.await;
        }
        println!("Warmup run completed.");
    }
    println!("Starting main benchmark run...");
    println!(
        "Traffic request rate: {}",
        crate::result::py_float(plan.request_rate)
    );
    let distribution = if plan.burstiness == 1.0 {
        "Poisson process"
    } else {
        "Gamma distribution"
    };
    println!(
        "Burstiness factor: {} ({distribution})",
        crate::result::py_float(plan.burstiness)
    );
    match plan.max_concurrency {
        Some(c) => println!("Maximum request concurrency: {c}"),
        None => println!("Maximum request concurrency: None"),
    }

    let n = plan.requests.len();
    let offsets = arrival_offsets(n, plan.request_rate, plan.burstiness, plan.seed)?;
    let pb = progress_bar(n, plan.show_progress);
    let bench_start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (i, offset) in offsets.iter().enumerate() {
        if *offset > 0.0 {
            tokio::time::sleep_until((bench_start + Duration::from_secs_f64(*offset)).into()).await;
        }
        let arrival = Instant::now();
        let (client, plan, sem, pb) = (client.clone(), plan.clone(), semaphore.clone(), pb.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = match &sem {
                Some(s) => Some(s.clone().acquire_owned().await),
                None => None,
            };
            let start = Instant::now();
            let mut rec = client
                .send(
                    plan.backend,
                    &plan.api_uri,
                    &input_for(&plan, &plan.requests[i]),
                )
                .await;
            rec.start_time = start.duration_since(bench_start).as_secs_f64();
            rec.client_queue_time = start.duration_since(arrival).as_secs_f64();
            pb.inc(1);
            rec
        }));
    }
    let mut records = Vec::with_capacity(n);
    for t in tasks {
        records.push(t.await.unwrap_or_else(|e| RequestRecord {
            error: format!("request task failed: {e}"),
            ..Default::default()
        }));
    }
    pb.finish_and_clear();
    let duration = bench_start.elapsed().as_secs_f64();

    let count = plan.tokenizer.as_ref().map(|t| {
        let t = t.clone();
        move |s: &str| t.count(s)
    });
    let count_ref: Option<&dyn Fn(&str) -> usize> =
        count.as_ref().map(|c| c as &dyn Fn(&str) -> usize);
    let output_lens: Vec<usize> = records
        .iter()
        .map(|r| resolve_output_len(r, count_ref))
        .collect();
    let metrics = calculate_metrics(
        &records,
        &output_lens,
        duration,
        &plan.percentiles,
        &plan.goodput,
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(BenchResult {
        date: format_date(now),
        backend: plan.backend,
        label: plan.label.clone(),
        model_id: plan.model_id.clone(),
        tokenizer_id: plan
            .tokenizer
            .as_ref()
            .map(|t| t.path().display().to_string()),
        num_prompts: plan.num_prompts,
        request_rate: plan.request_rate,
        burstiness: plan.burstiness,
        max_concurrency: plan.max_concurrency,
        duration,
        error_counts: error_counts(&records),
        metrics,
        records,
        output_lens,
        percentile_metrics: plan.percentile_metrics.clone(),
        percentiles: plan.percentiles.clone(),
        goodput: plan.goodput.clone(),
    })
}

/// [`execute`], then what vLLM prints after a run: the failed requests to stderr and the
/// report to stdout.
pub(crate) async fn execute_and_report(
    client: &HttpClient,
    plan: Arc<RunPlan>,
) -> Result<BenchResult, BenchError> {
    let result = execute(client, plan).await?;
    let failures = result.failure_text();
    if !failures.is_empty() {
        eprint!("{failures}");
    }
    print!("{}", result.report_text());
    Ok(result)
}

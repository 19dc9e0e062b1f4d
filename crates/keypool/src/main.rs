//! `keypool`: parse the command line, load config, start telemetry, run.

use clap::Parser;

/// mimalloc instead of glibc's malloc: allocation was ~12% of keypool's CPU
/// under load (perf), and this took keypool from 17.9k to 26.2k requests/s at
/// concurrency 64 on the reference machine (docs/benchmarks.md). Built with
/// `no_thp`: transparent huge pages under mimalloc's arenas cost 10 MB idle
/// and ~23 KB per open stream (64 KB against 41 KB) for ~5% throughput.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use keypool::cli::{Cli, Command};

// Requests are served on worker threads of their own (server::workers); this
// runtime only accepts connections and runs the background tasks.
#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once: a cause whose text the message
/// already holds (sqlx and others repeat their source) is left out.
fn message(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Demo(args) = &cli.command {
        let _log = keypool::telemetry::init_log("warn", cli.log_format.unwrap_or_default())?;
        return keypool::demo::run(args).await;
    }
    let config = cli.load_config()?;
    // Kept until `run` returns: dropping it writes the lines still buffered.
    let _log = keypool::telemetry::init_log(&config.log, cli.log_format.unwrap_or(config.telemetry.log_format))?;
    match &cli.command {
        Command::Serve(_) => {
            // The file named, else the default one (watched even before it exists).
            let file = cli.config.clone().unwrap_or_else(|| keypool::config::DEFAULT_CONFIG_FILE.into());
            let cli = std::sync::Arc::new(cli);
            let load = std::sync::Arc::new(move || cli.load_config());
            serve(&config, keypool::reload::Source { file: Some(file), load }).await
        }
        other => keypool::cli::run_admin(other, &config).await,
    }
}

async fn serve(config: &keypool::config::Config, source: keypool::reload::Source) -> anyhow::Result<()> {
    tracing::info!("database: {}", keypool::store::database_path(&config.database_url));
    // The one Prometheus recorder of this process; library users and
    // in-process tests run without one (the metrics macros are no-ops), and
    // so does a server with `metrics = false`.
    if config.metrics {
        keypool::metrics::install(config)?;
    }
    let telemetry = &config.telemetry;
    keypool::server::limit_refusal_log(telemetry.auth_failure_log_lines, telemetry.auth_failure_log_interval);
    let traces = keypool::telemetry::Traces::start(telemetry)?;
    let running = keypool::app::start_with(config, Some(source)).await?;
    tracing::info!(
        "keypool listening on {}://{} (upstream {}, auth {:?})",
        config.server.scheme(),
        running.addr(),
        keypool::config::mask_url_password(&config.upstream),
        config.auth
    );
    let served = keypool::shutdown::serve_until_signalled(running).await;
    traces.shutdown().await;
    served
}

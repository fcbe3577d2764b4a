use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = pgshift::cli::Cli::parse();
    let runtime = match cli.command.worker_threads() {
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async_main(cli));
}

async fn async_main(cli: pgshift::cli::Cli) {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("PGSHIFT_LOG")
                .unwrap_or_else(|_| EnvFilter::new("pgshift=info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    if let Err(e) = pgshift::cli::run(cli).await {
        eprintln!("error: {e}");
        std::process::exit(match e.kind() {
            pgshift::Kind::Parse | pgshift::Kind::Invalid | pgshift::Kind::Config => 2,
            _ => 1,
        });
    }
}

//! The `pgshift` command line: options (clap) and dispatch. `main` only
//! parses, sets up logging and calls [`run`].

use crate::backfill::BackfillOptions;
use crate::engine::exec::LockPolicy;
use crate::engine::{Engine, Options};
use crate::error::{Error, Result};
use crate::migration::{self, Migration};
use crate::progress::ProgressMode;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// Zero-downtime PostgreSQL schema changes (expand / backfill / contract).
#[derive(Debug, Parser)]
#[command(name = "pgshift", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Options accepted before or after the subcommand.
#[derive(Debug, Args, Clone)]
pub struct GlobalOpts {
    /// Postgres connection URL or key=value string.
    /// [default: postgres://postgres@localhost:5432/postgres]
    #[arg(long, global = true, env = "PGSHIFT_POSTGRES_URL")]
    pub postgres_url: Option<String>,
    /// The schema to migrate [default: public].
    #[arg(long, global = true, env = "PGSHIFT_SCHEMA")]
    pub schema: Option<String>,
    /// lock_timeout of each DDL attempt, in milliseconds.
    #[arg(
        long,
        global = true,
        env = "PGSHIFT_LOCK_TIMEOUT",
        default_value_t = 500
    )]
    pub lock_timeout: u64,
    /// Attempts per DDL statement before giving up (jittered exponential backoff between).
    #[arg(long, global = true, default_value_t = 10)]
    pub lock_retries: u32,
    /// Rows per backfill batch; 0 sizes batches to --backfill-batch-target-ms.
    #[arg(long, global = true, default_value_t = 0)]
    pub backfill_batch_size: u64,
    /// Target duration of one adaptive backfill batch, in milliseconds.
    #[arg(long, global = true, default_value_t = 100)]
    pub backfill_batch_target_ms: u64,
    /// Pause between backfill batches, in milliseconds.
    #[arg(long, global = true, default_value_t = 0)]
    pub backfill_batch_delay: u64,
    /// Connections that backfill together, each a share of every batch's
    /// key range (a single integer key, or a table walked by pages).
    #[arg(long, global = true, default_value_t = 1)]
    pub backfill_workers: usize,
    /// How backfill progress is shown.
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the control schema `pgshift` (idempotent).
    Init,
    /// Start a migration: expand, dual-write triggers, version schema, backfill.
    Start {
        file: PathBuf,
        /// Complete right after starting.
        #[arg(long, short = 'c')]
        complete: bool,
        /// When a daemon runs the backfill, follow it to the end.
        #[arg(long)]
        wait: bool,
    },
    /// Complete the active migration: contract to the new shape.
    Complete {
        /// Wait for a daemon's backfill to finish.
        #[arg(long)]
        wait: bool,
        /// Wait this many seconds for proxy sessions on the old version to
        /// leave, then close them (without it, complete refuses while they remain).
        #[arg(long, value_name = "SECONDS")]
        drain_timeout: Option<u64>,
    },
    /// Roll back the active migration, removing everything it added.
    Rollback,
    /// Hold the daemon's copier before its next batch.
    Pause,
    /// Let the daemon's copier go on.
    Resume,
    /// Change a live copier setting (rate_limit, batch_target_ms, batch_size,
    /// max_p99_ms, max_p99_ratio, max_replica_lag_ms, paused).
    Set { key: String, value: String },
    /// Show the migration state.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply the pending migrations of a directory in order.
    Migrate {
        dir: PathBuf,
        /// Also complete the last migration.
        #[arg(long, short = 'c')]
        complete: bool,
    },
    /// Write the applied migrations (as stored, byte for byte) into DIR.
    Pull {
        dir: PathBuf,
        /// Overwrite files whose contents differ.
        #[arg(long)]
        force: bool,
    },
    /// Print the newest version schema (or migration name).
    Latest {
        /// Print the migration name instead of the version schema.
        #[arg(long)]
        migration: bool,
    },
    /// Print the SQL every phase of a migration would run; changes nothing.
    Plan { file: PathBuf },
    /// Run the wire proxy: clients connect here and each session sees its schema version.
    Proxy(crate::serve::ProxyArgs),
    /// Run the daemon: proxy, background copier, metrics and health endpoints.
    Daemon(crate::daemon::DaemonArgs),
    /// Check a migration file, and (unless --offline) that it fits the database.
    Validate {
        file: PathBuf,
        /// Only check the file's syntax and fields.
        #[arg(long)]
        offline: bool,
    },
}

impl Command {
    /// Worker threads of the async runtime: `None` for one thread (every
    /// command but the proxy, whose `--workers` decides).
    pub fn worker_threads(&self) -> Option<usize> {
        match self {
            Command::Proxy(a) if a.workers > 0 => Some(a.workers),
            Command::Daemon(a) if a.workers > 0 => Some(a.workers),
            _ => None,
        }
    }
}

impl GlobalOpts {
    pub fn url(&self) -> &str {
        self.postgres_url
            .as_deref()
            .unwrap_or("postgres://postgres@localhost:5432/postgres")
    }

    pub fn schema(&self) -> &str {
        self.schema.as_deref().unwrap_or("public")
    }

    pub fn engine_options(&self) -> Result<Options> {
        if self.lock_retries == 0 {
            return Err(Error::config("--lock-retries must be at least 1"));
        }
        if self.lock_timeout == 0 {
            return Err(Error::config(
                "--lock-timeout must be positive (0 would wait for locks forever)",
            ));
        }
        if self.backfill_workers == 0 {
            return Err(Error::config("--backfill-workers must be at least 1"));
        }
        Ok(Options {
            schema: self.schema().to_string(),
            lock: LockPolicy {
                timeout: Duration::from_millis(self.lock_timeout),
                attempts: self.lock_retries,
                ..LockPolicy::default()
            },
            backfill: BackfillOptions {
                batch_size: (self.backfill_batch_size > 0).then_some(self.backfill_batch_size),
                target: Duration::from_millis(self.backfill_batch_target_ms.max(1)),
                delay: Duration::from_millis(self.backfill_batch_delay),
                workers: self.backfill_workers,
                ..BackfillOptions::default()
            },
            progress: self.progress,
            handoff: false,
        })
    }
}

/// Run a parsed command line; what it prints goes to stdout.
pub async fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    match &cli.command {
        Command::Proxy(args) => return crate::serve::run(g.url(), g.schema(), args).await,
        Command::Daemon(args) => return crate::daemon::run(g, args).await,
        _ => {}
    }
    let opts = g.engine_options()?;
    let connect = || Engine::connect(g.url(), opts.clone());
    match cli.command {
        Command::Init => {
            connect().await?.init().await?;
            println!("pgshift initialised");
        }
        Command::Start {
            file,
            complete,
            wait,
        } => {
            let m = Migration::load(&file)?;
            let opts = Options {
                // Completing right away needs the backfill done here.
                handoff: !complete,
                ..opts.clone()
            };
            let e = Engine::connect(g.url(), opts).await?;
            let clock = std::time::Instant::now();
            let res = e.start(&m).await;
            if !complete || res.is_err() {
                // With --complete the lock stays taken until complete is
                // done: no other pgshift can come in between.
                e.release().await;
            }
            if let crate::engine::Started::HandedOff(pid) = res? {
                if wait {
                    e.wait_backfilled(&m.name).await?;
                } else {
                    println!(
                        "migration {} expanded; the pgshift daemon (copier backend pid {pid}) runs the backfill: follow it with `pgshift status`",
                        m.name
                    );
                    return Ok(());
                }
            }
            if complete {
                let res = e.complete().await;
                e.release().await;
                res?;
                // Connected to done, like pgroll's benchmark times Start + Complete.
                println!(
                    "migration {} started and completed in {:.3} s",
                    m.name,
                    clock.elapsed().as_secs_f64()
                );
            } else {
                println!(
                    "migration {} started; new version schema: {}",
                    m.name,
                    e.plan_version_schema(&m)?
                );
            }
        }
        Command::Complete {
            wait,
            drain_timeout,
        } => {
            let e = connect().await?;
            let res = e
                .complete_with(&crate::engine::CompleteOptions {
                    wait,
                    drain_timeout: drain_timeout.map(Duration::from_secs),
                })
                .await;
            e.release().await;
            let name = res?;
            println!("migration {name} completed");
        }
        Command::Rollback => {
            let e = connect().await?;
            let res = e.rollback().await;
            e.release().await;
            let name = res?;
            println!("migration {name} rolled back");
        }
        Command::Pause | Command::Resume | Command::Set { .. } => {
            let (key, value) = match &cli.command {
                Command::Pause => ("paused".to_string(), "true".to_string()),
                Command::Resume => ("paused".to_string(), "false".to_string()),
                Command::Set { key, value } => (key.clone(), value.clone()),
                _ => unreachable!("matched above"),
            };
            crate::engine::state::check_setting(&key, &value)?;
            let e = connect().await?;
            e.init().await?;
            crate::engine::state::set_setting(e.client(), g.schema(), &key, &value).await?;
            println!("{key} = {value}");
        }
        Command::Status { json } => {
            let s = connect().await?.status().await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s).map_err(|e| Error::state(e.to_string()))?
                );
            } else {
                println!("schema:  {}", s.schema);
                println!("status:  {}", s.status);
                if let Some(v) = &s.version {
                    println!("version: {v} (phase {})", s.phase.as_deref().unwrap_or("?"));
                }
                if let Some(v) = &s.version_schema {
                    println!("version schema: {v}");
                }
                for (k, v) in &s.settings {
                    println!("setting {k} = {v}");
                }
                for d in &s.daemons {
                    println!(
                        "daemon {} on {}: {} session(s){}",
                        d.id,
                        d.listen,
                        d.sessions,
                        d.throttle
                            .as_ref()
                            .map(|t| format!(", copier held back: {t}"))
                            .unwrap_or_default()
                    );
                }
                for b in &s.backfill {
                    println!(
                        "backfill {}: {}/{} rows in {} batches{}",
                        b.table,
                        b.rows_done,
                        b.rows_total,
                        b.batches,
                        if b.done { ", done" } else { "" }
                    );
                }
            }
        }
        Command::Migrate { dir, complete } => {
            let files = migration::files_in_dir(&dir)?;
            let parsed = files
                .iter()
                .map(|f| Migration::load(f))
                .collect::<Result<Vec<_>>>()?;
            let e = connect().await?;
            let res = e.migrate(&parsed, complete).await;
            e.release().await;
            let started = res?;
            if started.is_empty() {
                println!("nothing to apply");
            } else {
                println!("applied: {}", started.join(", "));
            }
        }
        Command::Pull { dir, force } => {
            let e = connect().await?;
            let history = e.history().await?;
            std::fs::create_dir_all(&dir)
                .map_err(|err| Error::io(format!("cannot create {}", dir.display()), err))?;
            // Check every file first: nothing is written unless all can be.
            let mut plan = Vec::new();
            for (name, contents) in &history {
                let ext = if contents.trim_start().starts_with('{') {
                    "json"
                } else {
                    "yaml"
                };
                let path = dir.join(format!("{name}.{ext}"));
                match std::fs::read_to_string(&path) {
                    Ok(existing) if existing == *contents => continue,
                    Ok(_) if !force => {
                        return Err(Error::config(format!(
                            "{} exists with other contents than the applied migration {name:?}; nothing written (use --force to overwrite)",
                            path.display()
                        )))
                    }
                    _ => plan.push((path, contents)),
                }
            }
            for (path, contents) in &plan {
                std::fs::write(path, contents)
                    .map_err(|err| Error::io(format!("cannot write {}", path.display()), err))?;
                println!("wrote {}", path.display());
            }
            println!(
                "{} migration(s) in {}, {} written",
                history.len(),
                dir.display(),
                plan.len()
            );
        }
        Command::Latest { migration } => match connect().await?.latest().await? {
            Some(m) if migration => println!("{}", m.name),
            Some(m) => println!("{}", m.version_schema),
            None => {
                return Err(Error::state(format!(
                    "no migrations applied to schema {:?}",
                    g.schema()
                )))
            }
        },
        Command::Plan { file } => {
            let m = Migration::load(&file)?;
            let plan = connect().await?.plan(&m).await?;
            print!("{}", plan.render());
        }
        Command::Proxy(_) | Command::Daemon(_) => unreachable!("handled above"),
        Command::Validate { file, offline } => {
            let m = Migration::load(&file)?;
            if !offline {
                connect().await?.plan(&m).await?;
            }
            println!(
                "{}: valid ({} operations)",
                file.display(),
                m.file.operations.len()
            );
        }
    }
    Ok(())
}

impl Engine {
    fn plan_version_schema(&self, m: &Migration) -> Result<String> {
        crate::plan::version_schema_name(&self.options().schema, m)
    }
}

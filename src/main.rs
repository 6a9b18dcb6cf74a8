//! The `ironlb` command: argument parsing and dispatch only. Each subcommand's work lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ironlb",
    version,
    about = "LoadBalancer Services for bare-metal Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent (the DaemonSet entry point).
    Agent(Box<ironlb::agent::AgentArgs>),
    /// Check MetalLB configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Convert a legacy MetalLB ConfigMap (the `config` payload or the whole object) to metallb.io CRD YAML.
    Migrate {
        /// The ConfigMap file.
        file: PathBuf,
        /// The namespace the objects are written in.
        #[arg(
            long,
            env = "IRONLB_CONFIG_NAMESPACE",
            default_value = "metallb-system"
        )]
        namespace: String,
    },
    /// Show which IP every LoadBalancer Service would get, offline; exit 2 if an assigned IP would move.
    Plan {
        /// MetalLB configuration: files or directories of YAML (CRDs or the legacy ConfigMap).
        #[arg(long, required = true)]
        config: Vec<PathBuf>,
        /// Services as `kubectl get svc -A -o yaml` prints them.
        #[arg(long)]
        services: PathBuf,
        /// Handle only Services of this loadBalancerClass (default: Services with no class).
        #[arg(long, env = "IRONLB_LB_CLASS")]
        lb_class: Option<String>,
    },
    /// Print the metallb.io CRD manifests generated from IronLB's types.
    Crds,
    /// Serve the validating admission webhook for the metallb.io kinds (the Deployment entry point): `kubectl apply`
    /// gets the verdict of `config check`.
    Webhook(ironlb::webhook::WebhookArgs),
    /// Show every VIP with its pool, owner node, interface and since when.
    Status(ironlb::cli::status::StatusArgs),
    /// Compare this network namespace's IPVS services and VIP bindings with what the cluster wants; exit 1 on drift.
    Verify(ironlb::cli::verify::VerifyArgs),
    /// The embedded lab: a small cluster in network namespaces with real agents (needs root).
    // Only with the `lab` cargo feature (a default one); the release image is built without it.
    #[cfg(feature = "lab")]
    Lab {
        #[command(subcommand)]
        command: Option<LabCommand>,
        #[command(flatten)]
        args: ironlb::lab::demo::LabArgs,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate YAML files or directories; print a summary, or every error as `Kind/name: field: message`.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The namespace the agent reads its configuration from: a metallb.io object in another namespace is an
        /// error, as MetalLB's webhook refuses it and the agent never sees it.
        #[arg(
            long,
            env = "IRONLB_CONFIG_NAMESPACE",
            default_value = "metallb-system"
        )]
        namespace: String,
    },
}

#[cfg(feature = "lab")]
#[derive(Subcommand)]
enum LabCommand {
    /// Run only the lab's Kubernetes API server and write a kubeconfig for it.
    Api(ironlb::lab::api::ApiArgs),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ironlb: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Agent(args) => {
            ironlb::telemetry::init_json_logs();
            // One thread for the agent's loop and its I/O: fewer threads keep fewer malloc arenas, which is most of
            // its memory at 10^4 Services. The timing-critical parts have threads of their own: the gossip failure
            // detector (its own single-threaded runtime) and the ARP/NDP responder.
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(ironlb::agent::run(*args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check { paths, namespace }) => {
            let valid = ironlb::config::check(&paths, &namespace, &mut out)?;
            Ok(if valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Migrate { file, namespace } => {
            // The YAML is printed either way; errors in it are comments at its top, and the exit status says so.
            let valid = ironlb::config::migrate_file(&file, &namespace, &mut out)?;
            Ok(if valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Plan {
            config,
            services,
            lb_class,
        } => {
            let moved =
                ironlb::alloc::plan::run(&config, &services, lb_class.as_deref(), &mut out)?;
            Ok(if moved {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Crds => {
            use std::io::Write;
            out.write_all(ironlb::config::crd_manifests().as_bytes())
                .context("writing to stdout")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Webhook(args) => {
            ironlb::telemetry::init_json_logs();
            runtime()?.block_on(ironlb::webhook::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) if args.watch => {
            runtime()?.block_on(ironlb::cli::status::watch(
                &args,
                &mut out,
                ironlb::agent::shutdown_signal(),
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) => {
            use std::io::Write;
            let report = runtime()?.block_on(ironlb::cli::status::run(&args))?;
            out.write_all(report.as_bytes())
                .context("writing to stdout")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(args) => {
            let equal = runtime()?.block_on(ironlb::cli::verify::run(&args, &mut out))?;
            Ok(if equal {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        #[cfg(feature = "lab")]
        Command::Lab {
            command: Some(LabCommand::Api(args)),
            ..
        } => {
            ironlb::telemetry::init_json_logs();
            runtime()?.block_on(args.run())?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "lab")]
        Command::Lab {
            command: None,
            args,
        } => {
            runtime()?.block_on(ironlb::lab::demo::run(args, &mut out))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

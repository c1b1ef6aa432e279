//! The `ldx-node` command line: `init`, `run`, and the staff subcommands that call the
//! local Registry API. It is the binary's user interface, so it prints.

mod client;
mod init;
mod ledger;
mod outbox;
mod output;
mod reports;
mod retention;
mod staff;

pub use staff::{add_offline as add_staff_offline, add_offline_with as add_staff_offline_with};

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Args, Parser, Subcommand, ValueEnum};
use ldx_proto::v1 as pb;

use crate::clock::SystemClock;
use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "ldx-node",
    version,
    about = "ldx node: floating-population service records of one street office, township or county"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented starter config, a fresh data key and (unless given) a federation salt.
    Init(init::InitArgs),
    /// Run the node until SIGTERM or Ctrl-C.
    Run {
        /// Config file.
        #[arg(long, env = "LDX_CONFIG", default_value = "ldx-node.toml")]
        config: PathBuf,
    },
    /// Persons registered at this node.
    Person {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: PersonCommand,
    },
    /// Services given to persons registered here.
    Service {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// The ledger (台帐) as CSV: import rows as registrations, export every person.
    Ledger {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Quarterly service reports: issue them at her residence, verify them at her origin.
    Report {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: reports::ReportCommand,
    },
    /// Worklists: what is due and overdue at this node.
    Work {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: reports::WorkCommand,
    },
    /// The two-way assessment (双向考核) as this node measures it, per counterpart, beside
    /// the counterpart's own figures once it sent them.
    Assessment {
        #[command(flatten)]
        client: ClientArgs,
        /// Quarter, e.g. 2026Q1 (default: the current quarter).
        #[arg(long)]
        period: Option<String>,
    },
    /// Replication status: every channel's head, acked and pending envelopes, and errors.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The envelopes waiting for one peer, and setting aside one the channel cannot carry.
    Outbox {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: outbox::OutboxCommand,
    },
    /// Retention: purge the personal fields of persons who moved out more than
    /// retention.years ago and have nothing open (the node does it daily), or --dry-run.
    Retention {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: retention::RetentionCommand,
    },
    /// Exit 0 if the node (or a gateway, at its directory address) answers gRPC health
    /// with SERVING within 5 s, else 1: for container and service-manager health checks.
    Health {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Log in to the node: the session token is kept in --token-file (mode 0600) and sent
    /// by every later command.
    Login {
        #[command(flatten)]
        client: ClientArgs,
        /// The staff account.
        name: String,
        /// Read the password from this file (default: asked for on the terminal).
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// End the session and delete its token.
    Logout {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The account, roles and township of the session.
    Whoami {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Staff accounts of this node (admin).
    Staff {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: staff::StaffCommand,
    },
    /// The audit log of personal-data access.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The message log: every envelope sent, applied or refused, one tab-separated line each
    /// (index, direction, peer, to, seq, kind, person key, reason).
    Log {
        #[command(flatten)]
        client: ClientArgs,
        /// Start after this index.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Print every entry from --after on (default: one page of 1000).
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walks the whole hash chain of the audit log in the data directory (read only, also
    /// while the node runs) and names the first entry where it breaks; exit 1 if it does.
    Verify {
        /// Config file of the node whose data directory is checked.
        #[arg(long, env = "LDX_CONFIG", default_value = "ldx-node.toml")]
        config: PathBuf,
    },
    /// Who saw or changed what, when and for what purpose (auditor): every entry, or those
    /// about one person, of one staff account, or since a day.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Only entries about the person with this ID number.
        #[arg(long)]
        person: Option<String>,
        /// Only entries of this staff account (acting, or acted for by a deputy).
        #[arg(long)]
        staff: Option<String>,
        /// Only entries on or after this day, YYYY-MM-DD.
        #[arg(long)]
        since: Option<String>,
    },
}

/// How staff subcommands reach the node.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Config file of the node to talk to; its running address is read from its data directory.
    #[arg(long, global = true, env = "LDX_CONFIG", default_value = "ldx-node.toml")]
    pub config: PathBuf,
    /// Staff API address, e.g. http://127.0.0.1:7301 (instead of --config).
    #[arg(long, global = true, env = "LDX_ENDPOINT", visible_alias = "api")]
    pub endpoint: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Where `login` keeps the session token and the other commands read it (default:
    /// ~/.config/ldx/session-<division>).
    #[arg(long, global = true, env = "LDX_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PersonCommand {
    /// Register a move-in.
    Add(PersonAddArgs),
    /// Show one person's record.
    Show {
        /// 18-digit resident ID number.
        id: String,
    },
    /// List persons.
    List(PersonListArgs),
    /// At her workplace: hand her archive over to her residence node after she left the
    /// employer (移交管理).
    Transfer {
        /// 18-digit resident ID number.
        id: String,
        /// Her residence division (street office, township or county).
        #[arg(long)]
        residence_division: String,
        /// Date she left the employer, YYYY-MM-DD.
        #[arg(long)]
        separation_date: String,
    },
    /// Ask her origin about her certificate; with --issue, ask it to issue one (free).
    Certificate {
        /// 18-digit resident ID number.
        id: String,
        #[arg(long)]
        issue: bool,
    },
    /// File the SHA-256 of her photo (at her residence: the one her reports carry; at her
    /// origin: the one reports are checked against). The photo itself is not sent.
    Photo {
        /// 18-digit resident ID number.
        id: String,
        /// The photo file; only its SHA-256 is sent.
        #[arg(long, conflicts_with = "digest", required_unless_present = "digest")]
        file: Option<PathBuf>,
        /// The photo's SHA-256, 64 hex digits.
        #[arg(long)]
        digest: Option<String>,
    },
    /// Register a move-out.
    MoveOut {
        /// 18-digit resident ID number.
        id: String,
        /// Date she left, YYYY-MM-DD.
        #[arg(long)]
        date: String,
        /// Division she moves to, when known.
        #[arg(long)]
        next_division: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct PersonAddArgs {
    /// 18-digit resident ID number.
    #[arg(long)]
    pub id: String,
    /// Her name as on her ID card, at most 64 characters (sealed at rest).
    #[arg(long)]
    pub name: String,
    /// Her phone number, at most 20 characters (sealed at rest; may be left out).
    #[arg(long, default_value = "")]
    pub phone: String,
    /// Where she lives or works, as the seed's registration categories name it.
    #[arg(long, value_enum)]
    pub category: CategoryArg,
    /// This node's part for her: her residence, her workplace, or her origin.
    #[arg(long, value_enum, default_value = "residence")]
    pub role: RoleArg,
    /// Division where she lives or works (defaults to this node's division).
    #[arg(long)]
    pub division: Option<String>,
    /// Her street address in this division, at most 256 characters (sealed at rest).
    #[arg(long)]
    pub address: String,
    /// Move-in date, YYYY-MM-DD (defaults to today, China Standard Time).
    #[arg(long)]
    pub date: Option<String>,
    /// Household-registration division, when it differs from the ID's first six digits.
    #[arg(long)]
    pub household_division: Option<String>,
    /// Ask her origin for feedback urgently (shorter deadline).
    #[arg(long)]
    pub urgent: bool,
    /// Why she stays. Short stays (business-trip, medical-care, study, visit) are not in
    /// scope: the node refuses them.
    #[arg(long, value_enum)]
    pub reason_of_stay: Option<StayArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StayArg {
    Work,
    Business,
    Other,
    BusinessTrip,
    MedicalCare,
    Study,
    Visit,
}

impl From<StayArg> for pb::StayReason {
    fn from(s: StayArg) -> Self {
        match s {
            StayArg::Work => Self::Work,
            StayArg::Business => Self::Business,
            StayArg::Other => Self::Other,
            StayArg::BusinessTrip => Self::BusinessTrip,
            StayArg::MedicalCare => Self::MedicalCare,
            StayArg::Study => Self::Study,
            StayArg::Visit => Self::Visit,
        }
    }
}

#[derive(Debug, Args)]
pub struct PersonListArgs {
    #[arg(long, value_enum)]
    pub role: Option<RoleArg>,
    #[arg(long, value_enum)]
    pub category: Option<CategoryArg>,
    #[arg(long, value_enum)]
    pub status: Option<StatusArg>,
    /// Persons per page (at most 1000).
    #[arg(long, default_value_t = 50)]
    pub page_size: u32,
    /// Continue from a previous page's token.
    #[arg(long, default_value = "")]
    pub page_token: String,
    /// Only persons registered in this 9-digit township.
    #[arg(long)]
    pub township: Option<String>,
    /// Fetch every page.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Record a service given to a person.
    Add {
        /// 18-digit resident ID number.
        id: String,
        #[arg(long, value_enum, default_value = "health-check")]
        kind: ServiceKindArg,
        /// Date of the service, YYYY-MM-DD (defaults to today, China Standard Time).
        #[arg(long)]
        date: Option<String>,
        #[arg(long, default_value = "")]
        details: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Register every row of a ledger CSV (a move-in, and a move-out when it has a date);
    /// bad rows are reported and skipped, the rest are stored. Safe to repeat.
    Import {
        /// The ledger: UTF-8 CSV with a header row naming the columns (see README).
        file: PathBuf,
        /// Write the error report as CSV (row,field,message) to this file instead of printing it.
        #[arg(long)]
        errors: Option<PathBuf>,
    },
    /// Write every person at this node as a ledger CSV, which imports back unchanged.
    Export {
        /// Output file (created with mode 0600); default: standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Origin,
    Residence,
    Workplace,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CategoryArg {
    ClosedCommunity,
    MixedCommunity,
    UrbanVillage,
    Market,
    Organisation,
    OutMigrant,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusArg {
    Active,
    MovedOut,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ServiceKindArg {
    HealthCheck,
}

impl From<RoleArg> for pb::Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Origin => Self::Origin,
            RoleArg::Residence => Self::Residence,
            RoleArg::Workplace => Self::Workplace,
        }
    }
}

impl From<CategoryArg> for pb::Category {
    fn from(c: CategoryArg) -> Self {
        match c {
            CategoryArg::ClosedCommunity => Self::ClosedCommunity,
            CategoryArg::MixedCommunity => Self::MixedCommunity,
            CategoryArg::UrbanVillage => Self::UrbanVillage,
            CategoryArg::Market => Self::Market,
            CategoryArg::Organisation => Self::Organisation,
            CategoryArg::OutMigrant => Self::OutMigrant,
        }
    }
}

impl From<StatusArg> for pb::PersonStatus {
    fn from(s: StatusArg) -> Self {
        match s {
            StatusArg::Active => Self::Active,
            StatusArg::MovedOut => Self::MovedOut,
        }
    }
}

/// Entry point of the `ldx-node` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init(args) => init::run(&args),
        Command::Run { config } => run_node(&config).await,
        Command::Person { client, command } => client::person(&client, command).await,
        Command::Report { client, command } => reports::report(&client, command).await,
        Command::Work { client, command } => reports::work(&client, command).await,
        Command::Assessment { client, period } => reports::assessment(&client, period).await,
        Command::Service { client, command } => client::service(&client, command).await,
        Command::Ledger { client, command } => ledger::run(&client, command).await,
        Command::Status { client } => client::channel_status(&client).await,
        Command::Outbox { client, command } => outbox::run(&client, command).await,
        Command::Retention { client, command } => retention::run(&client, command).await,
        Command::Log { client, after, all } => client::log(&client, after, all).await,
        Command::Health { client } => client::health(&client).await,
        Command::Audit { command: AuditCommand::Verify { config } } => audit_verify(&config),
        Command::Audit { command: AuditCommand::List { client, person, staff, since } } => {
            staff::audit_list(&client, person, staff, since).await
        }
        Command::Login { client, name, password_file } => staff::login(&client, name, password_file).await,
        Command::Logout { client } => staff::logout(&client).await,
        Command::Whoami { client } => staff::whoami(&client).await,
        Command::Staff { client, command } => staff::staff(&client, command).await,
    }
}

fn audit_verify(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path, std::env::vars())?;
    let store = crate::storage::Store::open_read_only(&config.data_dir, &config.division)
        .map_err(|e| anyhow::anyhow!("cannot open the data directory {}: {e}", config.data_dir.display()))?;
    let entries =
        crate::registry::verify_audit_chain(&store).map_err(|fault| anyhow::anyhow!("audit chain broken: {fault}"))?;
    let head = store.audit_head()?;
    println!("audit chain intact: {entries} entries, head {}", hex::encode(&head.hash));
    Ok(())
}

async fn run_node(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path, std::env::vars())?;
    init_tracing(&config.log.level);
    let addr = config.api_addr()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("config key api.listen: cannot listen on {addr}: {e}"))?;
    crate::node::run(config, Arc::new(SystemClock), listener, shutdown_signal()).await?;
    Ok(())
}

/// Logs to stderr (coloured on a terminal only); `RUST_LOG` takes precedence over the
/// configured filter.
pub fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    // Colour only on a terminal: log files and journals get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested");
}

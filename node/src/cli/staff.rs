//! `ldx-node login|logout|whoami`, `ldx-node staff …` and `ldx-node audit list`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow};
use clap::Subcommand;
use ldx_proto::v1 as pb;
use ldx_proto::v1::staff_client::StaffClient;

use super::ClientArgs;
use super::client::{connect_channel, connect_raw, status, token_file};
use crate::config::Config;
use crate::registry::{NewStaff, Registry, StaffChange};

#[derive(Debug, Subcommand)]
pub enum StaffCommand {
    /// Add a staff account. Without --password-file the node makes a password and prints
    /// it once.
    Add {
        name: String,
        /// registrar, verifier, township-clerk, police-liaison, auditor or admin (repeat
        /// for several).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// A township clerk's 9-digit township.
        #[arg(long)]
        township: Option<String>,
        /// The account this one backs up (AB post): it acts with that account's roles
        /// while that one is marked absent.
        #[arg(long)]
        deputy_of: Option<String>,
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Write to the data directory of the stopped node instead of calling the API:
        /// how the first accounts of an existing node are made.
        #[arg(long)]
        offline: bool,
    },
    /// List the accounts.
    List,
    /// Refuse every later log-in of the account and end its sessions.
    Disable {
        name: String,
    },
    Enable {
        name: String,
    },
    /// Mark the account absent: its deputy acts for it.
    Absent {
        name: String,
    },
    Present {
        name: String,
    },
    /// Set a new password (made by the node and printed once, or from a file); ends the
    /// account's sessions and lifts a lock.
    Reset {
        name: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// On the stopped node's data directory, as for `add --offline`.
        #[arg(long)]
        offline: bool,
    },
}

fn read_password_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// The password from `file`, or asked for on the terminal without echo, or one line of
/// standard input.
fn password(file: Option<&Path>) -> anyhow::Result<String> {
    if let Some(file) = file {
        return read_password_file(file);
    }
    let stdin = std::io::stdin();
    let mut line = String::new();
    if stdin.is_terminal() {
        eprint!("password: ");
        std::io::stderr().flush()?;
        let fd = std::io::stdin();
        let before = rustix::termios::tcgetattr(&fd).ok();
        if let Some(before) = &before {
            let mut quiet = before.clone();
            quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
            let _ = rustix::termios::tcsetattr(&fd, rustix::termios::OptionalActions::Now, &quiet);
        }
        let read = stdin.lock().read_line(&mut line);
        if let Some(before) = &before {
            let _ = rustix::termios::tcsetattr(&fd, rustix::termios::OptionalActions::Now, before);
        }
        eprintln!();
        read?;
    } else {
        stdin.lock().read_line(&mut line)?;
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// Writes `text` to `path` with mode 0600 (its folder 0700), replacing what was there.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub async fn login(args: &ClientArgs, name: String, password_file: Option<PathBuf>) -> anyhow::Result<()> {
    let secret = password(password_file.as_deref())?;
    let (channel, config) = connect_raw(args).await?;
    let mut client = StaffClient::new(channel);
    let resp = client.login(pb::LoginRequest { name, password: secret }).await.map_err(status)?.into_inner();
    let path = token_file(args, config.as_ref());
    write_private(&path, &resp.token).with_context(|| format!("writing the session token to {}", path.display()))?;
    let account = resp.account.unwrap_or_default();
    let until = chrono::DateTime::from_timestamp_millis(resp.expires_at_ms).unwrap_or_default();
    println!(
        "logged in as {} ({}) until {} UTC; session token in {}",
        account.name,
        account.roles.join(", "),
        until.format("%Y-%m-%d %H:%M"),
        path.display()
    );
    Ok(())
}

pub async fn logout(args: &ClientArgs) -> anyhow::Result<()> {
    let (channel, config) = connect_channel(args).await?;
    let outcome = StaffClient::new(channel).logout(pb::LogoutRequest {}).await;
    let path = token_file(args, config.as_ref());
    let _ = std::fs::remove_file(&path);
    outcome.map_err(status)?;
    println!("logged out");
    Ok(())
}

pub async fn whoami(args: &ClientArgs) -> anyhow::Result<()> {
    let (channel, _) = connect_channel(args).await?;
    let account = StaffClient::new(channel).who_am_i(pb::WhoAmIRequest {}).await.map_err(status)?.into_inner();
    print_accounts(&[account], args.json);
    Ok(())
}

fn print_accounts(accounts: &[pb::StaffAccount], json: bool) {
    if json {
        let rows: Vec<_> = accounts
            .iter()
            .map(|a| {
                serde_json::json!({
                    "name": a.name, "roles": a.roles, "township": a.township, "deputy_of": a.deputy_of,
                    "disabled": a.disabled, "absent": a.absent, "locked_until_ms": a.locked_until_ms,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return;
    }
    println!("{:<20} {:<32} {:<10} {:<12} STATE", "NAME", "ROLES", "TOWNSHIP", "DEPUTY OF");
    for a in accounts {
        let mut state = Vec::new();
        if a.disabled {
            state.push("disabled");
        }
        if a.absent {
            state.push("absent");
        }
        if a.locked_until_ms > chrono::Utc::now().timestamp_millis() {
            state.push("locked");
        }
        let state = if state.is_empty() { "active".to_owned() } else { state.join(",") };
        println!("{:<20} {:<32} {:<10} {:<12} {state}", a.name, a.roles.join(","), a.township, a.deputy_of);
    }
}

/// The registry of a stopped node, opened on its data directory.
fn offline_registry(config_path: &Path) -> anyhow::Result<(Registry, Config)> {
    let config = Config::load(config_path, std::env::vars())?;
    Ok((offline_registry_of(&config)?, config))
}

fn offline_registry_of(config: &Config) -> anyhow::Result<Registry> {
    let division = crate::domain::Division::parse_node_level("division", &config.division)?;
    let data_key = crate::crypto::DataKey::load(&config.data_key_file).context("config key data_key_file")?;
    let salt =
        crate::crypto::FederationSalt::load(&config.federation_salt_file).context("config key federation_salt_file")?;
    let store = crate::storage::Store::open(&config.data_dir, division.as_str(), true).map_err(|e| {
        anyhow!(
            "cannot open the data directory {} ({e}); --offline needs the node stopped: while it runs, log in as an admin and leave out --offline",
            config.data_dir.display()
        )
    })?;
    Ok(Registry::new(Arc::new(store), data_key, salt, Arc::new(crate::clock::SystemClock), division)?)
}

/// Adds an account on the stopped node's data directory; returns the password the node
/// made, if it made one.
pub fn add_offline(config_path: &Path, new: &NewStaff) -> anyhow::Result<String> {
    add_offline_with(&Config::load(config_path, std::env::vars())?, new)
}

/// [`add_offline`] with the node's config as loaded.
pub fn add_offline_with(config: &Config, new: &NewStaff) -> anyhow::Result<String> {
    let registry = offline_registry_of(config)?;
    let actor =
        crate::staff::Actor { staff: "host".into(), call: "ldx-node staff add --offline".into(), ..Default::default() };
    let (_, made) = crate::staff::actor::acting(actor, || registry.staff_add(new))?;
    Ok(made)
}

pub async fn staff(args: &ClientArgs, command: StaffCommand) -> anyhow::Result<()> {
    let change = |name: String, change, password: String| async move {
        let (channel, _) = connect_channel(args).await?;
        let req = pb::UpdateStaffRequest { name, change: change as i32, password };
        let resp = StaffClient::new(channel).update_staff(req).await.map_err(status)?.into_inner();
        anyhow::Ok(resp)
    };
    match command {
        StaffCommand::Add { name, roles, township, deputy_of, password_file, offline } => {
            let password = password_file.as_deref().map(read_password_file).transpose()?.unwrap_or_default();
            let new = NewStaff {
                name: name.clone(),
                roles,
                township: township.unwrap_or_default(),
                deputy_of: deputy_of.unwrap_or_default(),
                password,
            };
            let made = if offline {
                add_offline(&args.config, &new)?
            } else {
                let (channel, _) = connect_channel(args).await?;
                let req = pb::AddStaffRequest {
                    name: new.name,
                    roles: new.roles,
                    township: new.township,
                    deputy_of: new.deputy_of,
                    password: new.password,
                };
                StaffClient::new(channel).add_staff(req).await.map_err(status)?.into_inner().password
            };
            println!("added staff account {name}");
            if !made.is_empty() {
                println!("password (shown once; the holder logs in with it): {made}");
            }
        }
        StaffCommand::List => {
            let (channel, _) = connect_channel(args).await?;
            let resp = StaffClient::new(channel).list_staff(pb::ListStaffRequest {}).await.map_err(status)?;
            print_accounts(&resp.into_inner().accounts, args.json);
        }
        StaffCommand::Disable { name } => {
            change(name, pb::StaffChange::Disable, String::new()).await?;
            println!("disabled; its sessions are ended");
        }
        StaffCommand::Enable { name } => {
            change(name, pb::StaffChange::Enable, String::new()).await?;
            println!("enabled");
        }
        StaffCommand::Absent { name } => {
            change(name, pb::StaffChange::Absent, String::new()).await?;
            println!("marked absent; its deputy acts for it");
        }
        StaffCommand::Present { name } => {
            change(name, pb::StaffChange::Present, String::new()).await?;
            println!("marked present");
        }
        StaffCommand::Reset { name, password_file, offline } => {
            let password = password_file.as_deref().map(read_password_file).transpose()?.unwrap_or_default();
            let made = if offline {
                let (registry, _) = offline_registry(&args.config)?;
                let actor = crate::staff::Actor {
                    staff: "host".into(),
                    call: "ldx-node staff reset --offline".into(),
                    ..Default::default()
                };
                crate::staff::actor::acting(actor, || registry.staff_update(&name, StaffChange::Reset, &password))?.1
            } else {
                change(name, pb::StaffChange::Reset, password).await?.password
            };
            println!("password set; the account's sessions are ended");
            if !made.is_empty() {
                println!("password (shown once): {made}");
            }
        }
    }
    Ok(())
}

pub async fn audit_list(
    args: &ClientArgs,
    person: Option<String>,
    staff: Option<String>,
    since: Option<String>,
) -> anyhow::Result<()> {
    let (channel, _) = connect_channel(args).await?;
    let mut client = StaffClient::new(channel);
    let mut req = pb::ListAuditRequest {
        id_number: person.unwrap_or_default(),
        staff: staff.unwrap_or_default(),
        since: since.unwrap_or_default(),
        page_size: crate::registry::AUDIT_PAGE_MAX,
        after: 0,
    };
    let mut all = Vec::new();
    loop {
        let page = client.list_audit(req.clone()).await.map_err(status)?.into_inner();
        all.extend(page.entries);
        if page.next_after == 0 {
            break;
        }
        req.after = page.next_after;
    }
    if args.json {
        let rows: Vec<_> = all
            .iter()
            .map(|e| {
                serde_json::json!({
                    "index": e.index, "at_ms": e.at_ms, "action": e.action, "person_key": e.person_key,
                    "staff": e.staff, "acting_for": e.acting_for, "role": e.role, "purpose": e.purpose,
                    "call": e.call, "detail": e.detail, "disclosed": e.disclosed,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    println!(
        "{:>8}  {:<19}  {:<22}  {:<16}  {:<16}  {:<24}  DETAIL",
        "INDEX", "AT (UTC)", "WHO", "ROLE", "PURPOSE", "ACTION"
    );
    for e in &all {
        let at = chrono::DateTime::from_timestamp_millis(e.at_ms).unwrap_or_default().format("%Y-%m-%d %H:%M:%S");
        let who = match e.acting_for.as_str() {
            "" => e.staff.clone(),
            principal => format!("{} for {principal}", e.staff),
        };
        println!(
            "{:>8}  {at}  {:<22}  {:<16}  {:<16}  {:<24}  {}",
            e.index, who, e.role, e.purpose, e.action, e.detail
        );
    }
    if all.is_empty() {
        println!("(no entry matches)");
    }
    Ok(())
}

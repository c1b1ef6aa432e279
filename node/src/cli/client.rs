//! Staff subcommands: each is one call (or a run of pages) to the node's Registry API.

use anyhow::{Context, anyhow, bail};
use ldx_proto::v1 as pb;
use ldx_proto::v1::monitor_client::MonitorClient;
use ldx_proto::v1::registry_client::RegistryClient;
use tonic::transport::Channel;

use crate::staff::client::{Bearer, StaffChannel, with_token};

use super::output;
use super::{ClientArgs, PersonCommand, ServiceCommand};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;

pub async fn person(args: &ClientArgs, command: PersonCommand) -> anyhow::Result<()> {
    if let PersonCommand::Photo { id, file, digest } = command {
        return super::reports::photo(args, id, file, digest).await;
    }
    let (mut client, config) = connect(args).await?;
    match command {
        PersonCommand::Photo { .. } => unreachable!("handled above"),
        PersonCommand::Add(a) => {
            let division = match (a.division, &config) {
                (Some(d), _) => d,
                (None, Some(c)) => c.division.clone(),
                (None, None) => return Err(anyhow!("--division is required with --endpoint")),
            };
            let req = pb::RegisterMoveInRequest {
                id_number: a.id,
                name: a.name,
                phone: a.phone,
                category: pb::Category::from(a.category) as i32,
                role: pb::Role::from(a.role) as i32,
                division,
                address: a.address,
                date: a.date.unwrap_or_else(today),
                household_division: a.household_division.unwrap_or_default(),
                urgent: a.urgent,
                reason_of_stay: a.reason_of_stay.map_or(0, |r| pb::StayReason::from(r) as i32),
            };
            let resp = client.register_move_in(req).await.map_err(status)?.into_inner();
            let person = resp.person.context("the node answered without a person")?;
            if !args.json && !resp.created {
                println!("already registered with the same details; nothing changed");
            }
            output::person(&person, args.json);
        }
        PersonCommand::Show { id } => {
            let resp = client.get_person(pb::GetPersonRequest { id_number: id }).await.map_err(status)?;
            output::person(&resp.into_inner().person.context("the node answered without a person")?, args.json);
        }
        PersonCommand::List(a) => {
            let mut req = pb::ListPersonsRequest {
                role: a.role.map_or(0, |r| pb::Role::from(r) as i32),
                category: a.category.map_or(0, |c| pb::Category::from(c) as i32),
                status: a.status.map_or(0, |s| pb::PersonStatus::from(s) as i32),
                page_size: a.page_size,
                page_token: a.page_token,
                township: a.township.unwrap_or_default(),
            };
            let mut persons = Vec::new();
            let mut unreadable = 0;
            let next = loop {
                let page = client.list_persons(req.clone()).await.map_err(status)?.into_inner();
                persons.extend(page.persons);
                unreadable += page.unreadable;
                if !a.all || page.next_page_token.is_empty() {
                    break page.next_page_token;
                }
                req.page_token = page.next_page_token;
            };
            output::person_list(&persons, &next, args.json);
            output::warn_unreadable(unreadable);
        }
        PersonCommand::Transfer { id, residence_division, separation_date } => {
            let req = pb::TransferArchiveRequest { id_number: id, residence_division, separation_date };
            let resp = client.transfer_archive(req).await.map_err(status)?;
            output::person(&resp.into_inner().person.context("the node answered without a person")?, args.json);
        }
        PersonCommand::Certificate { id, issue } => {
            let resp =
                client.query_certificate(pb::QueryCertificateRequest { id_number: id, issue }).await.map_err(status)?;
            if !args.json {
                println!("query sent to her origin; the answer will show on this record");
            }
            output::person(&resp.into_inner().person.context("the node answered without a person")?, args.json);
        }
        PersonCommand::MoveOut { id, date, next_division } => {
            let req =
                pb::RegisterMoveOutRequest { id_number: id, date, next_division: next_division.unwrap_or_default() };
            let resp = client.register_move_out(req).await.map_err(status)?;
            output::person(&resp.into_inner().person.context("the node answered without a person")?, args.json);
        }
    }
    Ok(())
}

pub async fn channel_status(args: &ClientArgs) -> anyhow::Result<()> {
    let (channel, _) = connect_channel(args).await?;
    let report = MonitorClient::new(channel).status(pb::StatusRequest {}).await.map_err(status)?.into_inner();
    output::status_report(&report, args.json);
    Ok(())
}

pub async fn log(args: &ClientArgs, after: u64, all: bool) -> anyhow::Result<()> {
    let (channel, _) = connect_channel(args).await?;
    let mut client = MonitorClient::new(channel);
    let mut after = after;
    loop {
        let page = client.list_log(pb::ListLogRequest { after, limit: 1000 }).await.map_err(status)?.into_inner();
        output::log_entries(&page.entries);
        match page.entries.last() {
            Some(last) if all => after = last.index,
            _ => return Ok(()),
        }
    }
}

pub async fn service(args: &ClientArgs, command: ServiceCommand) -> anyhow::Result<()> {
    let (mut client, _) = connect(args).await?;
    match command {
        ServiceCommand::Add { id, kind, date, details } => {
            let kind = match kind {
                super::ServiceKindArg::HealthCheck => pb::ServiceKind::HealthCheck,
            };
            let req = pb::RecordServiceRequest {
                id_number: id,
                kind: kind as i32,
                date: date.unwrap_or_else(today),
                details,
            };
            let resp = client.record_service(req).await.map_err(status)?;
            output::person(&resp.into_inner().person.context("the node answered without a person")?, args.json);
        }
    }
    Ok(())
}

fn today() -> String {
    SystemClock.today().to_string()
}

/// The node's own message for refused input; the code name for everything else.
pub(super) fn status(s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::InvalidArgument
        | tonic::Code::NotFound
        | tonic::Code::AlreadyExists
        | tonic::Code::FailedPrecondition => anyhow!("{}", s.message()),
        code => anyhow!("{code:?}: {}", s.message()),
    }
}

/// `ldx-node health`: the gRPC health of the whole server (service name ""), with every step
/// bounded so a hung server fails the check instead of hanging it.
pub(super) async fn health(args: &ClientArgs) -> anyhow::Result<()> {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
    let (channel, _) = tokio::time::timeout(LIMIT, connect_raw(args))
        .await
        .map_err(|_| anyhow!("no connection within {} s", LIMIT.as_secs()))??;
    let answer = tokio::time::timeout(LIMIT, HealthClient::new(channel).check(HealthCheckRequest::default()))
        .await
        .map_err(|_| anyhow!("no health answer within {} s", LIMIT.as_secs()))?
        .map_err(|s| anyhow!("health check failed: {:?}: {}", s.code(), s.message()))?;
    let status = answer.into_inner().status();
    if status != ServingStatus::Serving {
        bail!("not serving: {}", status.as_str_name());
    }
    println!("SERVING");
    Ok(())
}

/// Connects to `--endpoint`, or to the node whose config is `--config` (at the address the
/// running node wrote into its data directory, else the configured one).
pub(super) async fn connect(args: &ClientArgs) -> anyhow::Result<(RegistryClient<StaffChannel>, Option<Config>)> {
    let (channel, config) = connect_channel(args).await?;
    Ok((RegistryClient::new(channel), config))
}

/// Connects as [`connect_raw`] does, with the session token of the last `ldx-node login`
/// to this node (see [`token_file`]) on every call.
pub(super) async fn connect_channel(args: &ClientArgs) -> anyhow::Result<(StaffChannel, Option<Config>)> {
    let (channel, config) = connect_raw(args).await?;
    let path = token_file(args, config.as_ref());
    let bearer = match std::fs::read_to_string(&path) {
        Ok(token) => Bearer::new(&token)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Bearer::none(),
        Err(e) => return Err(anyhow!("cannot read the session token {}: {e}", path.display())),
    };
    Ok((with_token(channel, bearer), config))
}

/// Where the session token of this node is kept: `--token-file` (`LDX_TOKEN_FILE`), else
/// `$XDG_CONFIG_HOME/ldx/session-<division>` (or `~/.config/ldx/…`), mode 0600.
pub(super) fn token_file(args: &ClientArgs, config: Option<&Config>) -> std::path::PathBuf {
    if let Some(path) = &args.token_file {
        return path.clone();
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| std::path::PathBuf::from("."));
    let name = match (config, &args.endpoint) {
        (Some(c), _) => c.division.clone(),
        (None, Some(e)) => e.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect(),
        (None, None) => "node".into(),
    };
    base.join("ldx").join(format!("session-{name}"))
}

/// Connects to the node's staff API without a session: for health and log-in.
pub(super) async fn connect_raw(args: &ClientArgs) -> anyhow::Result<(Channel, Option<Config>)> {
    let load = || {
        Config::load(&args.config, std::env::vars())
            .with_context(|| format!("reading {} (or pass --endpoint)", args.config.display()))
    };
    let (endpoint, config) = match &args.endpoint {
        // An https endpoint is checked as the config's api.tls_* say.
        Some(e) if e.starts_with("https://") => (e.clone(), Some(load()?)),
        Some(e) if e.contains("://") => (e.clone(), None),
        Some(e) => (format!("http://{e}"), None),
        None => {
            let config = load()?;
            let addr = std::fs::read_to_string(config.api_addr_file())
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| config.api.listen.clone());
            let scheme = if config.api_tls() { "https" } else { "http" };
            (format!("{scheme}://{addr}"), Some(config))
        }
    };
    let mut channel =
        Channel::from_shared(endpoint.clone()).with_context(|| format!("{endpoint} is not a valid address"))?;
    if endpoint.starts_with("https://") {
        let config = config.as_ref().expect("loaded for https");
        let (key, ca) = config.api_tls_ca_file();
        let tls = crate::exchange::tls::staff_client(key, ca, &config.api_tls_server_name())?;
        channel = channel.tls_config(tls).context("the staff API's TLS settings")?;
    }
    let channel = channel
        .connect()
        .await
        .map_err(|e| anyhow!("cannot reach the node at {endpoint}: {}; is it running?", crate::error_chain(&e)))?;
    Ok((channel, config))
}

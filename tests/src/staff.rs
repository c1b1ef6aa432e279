//! The harness's staff account: every test node gets one account, `lab`, with the roles
//! the tests act in (registrar, verifier, auditor, admin), made on the stopped node's data
//! directory as an operator would with `ldx-node staff add --offline`; clients log in
//! with it and send the session token.

use std::path::Path;

use anyhow::Context;
use ldx_node::staff::client::{Bearer, StaffChannel, with_token};
use tonic::transport::Channel;

pub const LAB_STAFF: &str = "lab";
/// Synthetic: the password of a test account on a throw-away node.
pub const LAB_PASSWORD: &str = "lab-password-of-the-test-harness";
pub const LAB_ROLES: [&str; 4] = ["registrar", "verifier", "auditor", "admin"];

/// Adds the `lab` account to the stopped node of `config`, once (a marker file beside the
/// config says it was done).
pub fn provision(config: &Path) -> anyhow::Result<()> {
    let marker = config.with_file_name("lab-staff.done");
    if marker.exists() {
        return Ok(());
    }
    let new = ldx_node::registry::NewStaff {
        name: LAB_STAFF.into(),
        roles: LAB_ROLES.iter().map(|r| r.to_string()).collect(),
        password: LAB_PASSWORD.into(),
        ..Default::default()
    };
    ldx_node::cli::add_staff_offline(config, &new).context("adding the harness's staff account")?;
    std::fs::write(password_file(config), format!("{LAB_PASSWORD}\n"))?;
    std::fs::write(&marker, "")?;
    Ok(())
}

/// [`provision`] again, e.g. after an empty file system was mounted over the data
/// directory.
pub fn provision_again(config: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(config.with_file_name("lab-staff.done"));
    provision(config)
}

/// The `lab` password as a file beside `config`, for `ldx-node login lab --password-file`.
pub fn password_file(config: &Path) -> std::path::PathBuf {
    config.with_file_name("lab.password")
}

/// Logs in as `lab` at the staff API `endpoint` (http://…) and returns the token.
pub async fn login(endpoint: &str) -> anyhow::Result<String> {
    let channel = Channel::from_shared(endpoint.to_owned())?.connect().await?;
    ldx_node::staff::client::login(channel, LAB_STAFF, LAB_PASSWORD).await.context("log-in of the harness account")
}

/// `channel` with `token` on every call.
pub fn authed(channel: Channel, token: &str) -> StaffChannel {
    with_token(channel, Bearer::new(token).expect("a token the node issued"))
}

/// The staff `Registry` at `url` (http://…) with `token`: for clients that reconnect
/// across restarts of their node.
pub async fn registry_at(
    url: &str,
    token: &str,
) -> Result<ldx_proto::v1::registry_client::RegistryClient<StaffChannel>, tonic::transport::Error> {
    let channel = Channel::from_shared(url.to_owned()).expect("an http:// URL").connect().await?;
    Ok(ldx_proto::v1::registry_client::RegistryClient::new(authed(channel, token)))
}

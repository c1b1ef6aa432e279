//! `ldx-node init`: a starter config, a fresh data key and the federation salt.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use clap::Args;

use crate::config::Config;
use crate::crypto::write_new_key_file;
use crate::domain::Division;
use crate::join::JoinBundle;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Division code this node serves (9-digit street office or township, 6-digit county).
    #[arg(long)]
    pub division: String,
    /// Directory to write ldx-node.toml, data.key and federation.salt into.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Staff API address written into the config.
    #[arg(long, default_value = "127.0.0.1:7301")]
    pub api_listen: String,
    /// The federation's salt file (from the district gateway's operator). Without it a new
    /// salt is generated, which only suits a node that is alone in its federation.
    #[arg(long, conflicts_with = "join")]
    pub federation_salt: Option<PathBuf>,
    /// A join bundle from `ldx-gateway pki issue --bundle` at the district: lays out this
    /// node's certificate, keys, the CA certificate, the federation key and salt, and fills
    /// in the peer listener and the gateway. Delete the bundle afterwards.
    #[arg(long, value_name = "FILE")]
    pub join: Option<PathBuf>,
    /// Peer API address written into the config when joining.
    #[arg(long, default_value = "0.0.0.0:7302", requires = "join")]
    pub peer_listen: String,
    /// The password of the first staff account, `admin` (default: made by the node and
    /// printed once).
    #[arg(long)]
    pub admin_password_file: Option<PathBuf>,
}

/// Makes the node's first staff account, `admin` (role admin), and prints how to log in.
fn first_admin(args: &InitArgs, config_path: &Path) -> anyhow::Result<()> {
    let password = match &args.admin_password_file {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("reading {}", file.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_owned(),
        None => String::new(),
    };
    let new =
        crate::registry::NewStaff { name: "admin".into(), roles: vec!["admin".into()], password, ..Default::default() };
    let made = super::staff::add_offline(config_path, &new)?;
    println!("  first staff account: admin (role admin: staff accounts and node operations, no personal data)");
    if !made.is_empty() {
        println!("  admin password (shown once): {made}");
    }
    println!(
        "  once the node runs: ldx-node login admin --config {0}, then ldx-node staff add NAME --role registrar --config {0}",
        config_path.display()
    );
    Ok(())
}

pub fn run(args: &InitArgs) -> anyhow::Result<()> {
    let division = Division::parse_node_level("division", &args.division)?;
    let config_path = args.dir.join("ldx-node.toml");
    if config_path.exists() {
        bail!("{} already exists; init never overwrites a node's files", config_path.display());
    }
    if let Some(bundle) = &args.join {
        return join(args, &division, bundle, &config_path);
    }
    std::fs::create_dir_all(&args.dir).with_context(|| format!("cannot create {}", args.dir.display()))?;
    let salt_path = args.dir.join("federation.salt");
    match &args.federation_salt {
        Some(from) => copy_salt(from, &salt_path)?,
        None if salt_path.exists() => {}
        None => write_new_key_file(&salt_path, "ldx federation salt: identical on every node of the federation")?,
    }
    write_new_key_file(
        &args.dir.join("data.key"),
        &format!("ldx data key of node {division}: back it up apart from the data"),
    )?;
    std::fs::write(&config_path, Config::starter(&division, &args.api_listen))
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    println!("initialised node {division} ({}) in {}", division.name(), args.dir.display());
    println!("  config:          {}", config_path.display());
    println!("  data key:        {}", args.dir.join("data.key").display());
    println!("  federation salt: {}", salt_path.display());
    first_admin(args, &config_path)?;
    println!("start it with: ldx-node run --config {}", config_path.display());
    Ok(())
}

/// `init --join`: the bundle's files, a fresh data key and a config that syncs. Checks
/// everything before it writes, and removes what it wrote if a later step fails.
fn join(args: &InitArgs, division: &Division, bundle_path: &Path, config_path: &Path) -> anyhow::Result<()> {
    let bundle = JoinBundle::read(bundle_path)?;
    if bundle.division != division.as_str() {
        bail!(
            "--division {division} but join bundle {} was issued to {}; ask the district for the bundle of {division}",
            bundle_path.display(),
            bundle.division
        );
    }
    args.peer_listen.parse::<std::net::SocketAddr>().map_err(|_| {
        anyhow!("--peer-listen: {:?} must be an address with a port, e.g. 0.0.0.0:7302", args.peer_listen)
    })?;
    std::fs::create_dir_all(&args.dir).with_context(|| format!("cannot create {}", args.dir.display()))?;
    let data_key = args.dir.join("data.key");
    if data_key.exists() {
        bail!("{} already exists; init never overwrites a node's files", data_key.display());
    }
    let mut written = bundle.lay_out(&args.dir)?;
    let result = (|| {
        write_new_key_file(&data_key, &format!("ldx data key of node {division}: back it up apart from the data"))?;
        written.push(data_key.clone());
        let text = Config::starter_joined(division, &args.api_listen, &args.peer_listen, &bundle.gateway);
        std::fs::write(config_path, text).with_context(|| format!("cannot write {}", config_path.display()))?;
        written.push(config_path.to_path_buf());
        // Every file the node will load, loaded now, so a bad bundle fails here and not at start.
        let config = Config::load(config_path, std::iter::empty())?;
        crate::crypto::FederationSalt::load(&config.federation_salt_file)?;
        ldx_proto::identity::SignKey::load(&config.peer.signing_key_file)?;
        ldx_proto::identity::PublicKey::load(&config.directory.federation_key_file)?;
        crate::exchange::tls::PeerTls::load(&config.peer)?;
        anyhow::Ok(())
    })();
    if let Err(e) = result {
        crate::join::remove_all(&written);
        return Err(e.context(format!("join bundle {} not laid out", bundle_path.display())));
    }
    println!("node {division} ({}) joined the federation in {}", division.name(), args.dir.display());
    println!("  config:    {} (peer API {}, gateway {})", config_path.display(), args.peer_listen, bundle.gateway);
    println!("  data key:  {} (back it up apart from the data)", data_key.display());
    println!("  PKI files: {}", args.dir.join("pki").display());
    first_admin(args, config_path)?;
    println!("delete {} now: it holds this node's private keys", bundle_path.display());
    println!(
        "the district adds this node to the directory: ldx-gateway directory add --division {division} --endpoint https://HOST:PORT"
    );
    println!("start it with: ldx-node run --config {}", config_path.display());
    Ok(())
}

fn copy_salt(from: &Path, to: &Path) -> anyhow::Result<()> {
    crate::crypto::FederationSalt::load(from)?;
    if to.exists() {
        bail!("{} already exists", to.display());
    }
    std::fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

//! `ldx-node init`: a starter config, a fresh data key and the federation salt.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use crate::config::Config;
use crate::crypto::write_new_key_file;
use crate::domain::Division;

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
    #[arg(long)]
    pub federation_salt: Option<PathBuf>,
}

pub fn run(args: &InitArgs) -> anyhow::Result<()> {
    let division = Division::parse_node_level("division", &args.division)?;
    let config_path = args.dir.join("ldx-node.toml");
    if config_path.exists() {
        bail!("{} already exists; init never overwrites a node's files", config_path.display());
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

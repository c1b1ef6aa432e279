//! Turns `data/divisions.tsv` into a sorted binary table in OUT_DIR: `division_codes.bin`
//! (u32 little-endian codes, ascending), `division_name_ends.bin` (u32 little-endian end
//! offset of each name) and `division_names.txt` (the names, concatenated). Lookups
//! binary-search the codes in place, so nothing is parsed at start-up.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let source = "data/divisions.tsv";
    println!("cargo:rerun-if-changed={source}");
    let text = fs::read_to_string(source)?;
    let mut rows: Vec<(u32, &str)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (code, name) =
            line.split_once('\t').ok_or_else(|| format!("{source}:{}: expected code<TAB>name", n + 1))?;
        if !matches!(code.len(), 2 | 4 | 6 | 9) || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{source}:{}: bad division code {code:?}", n + 1).into());
        }
        rows.push((code.parse()?, name));
    }
    rows.sort_unstable_by_key(|(code, _)| *code);
    if let Some(w) = rows.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!("{source}: duplicate division code {}", w[0].0).into());
    }

    let mut codes = Vec::with_capacity(rows.len() * 4);
    let mut ends = Vec::with_capacity(rows.len() * 4);
    let mut names = String::new();
    for (code, name) in &rows {
        codes.extend_from_slice(&code.to_le_bytes());
        names.push_str(name);
        ends.extend_from_slice(&u32::try_from(names.len())?.to_le_bytes());
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("division_codes.bin"), codes)?;
    fs::write(out.join("division_name_ends.bin"), ends)?;
    fs::write(out.join("division_names.txt"), names)?;
    Ok(())
}

//! `crdgen [DIR]`: writes the CRDs' YAML into DIR (default `crds/`), one
//! file per resource. CI fails when the committed files differ.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("crds"), PathBuf::from);
    std::fs::create_dir_all(&dir)?;
    for (file, crd) in operator::crd::all() {
        let path = dir.join(file);
        std::fs::write(&path, operator::crd::to_yaml(&crd)?)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

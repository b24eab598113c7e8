//! `crdgen [DIR]`: writes the CRDs' YAML into DIR (default `crds/`), one
//! file per resource, and their reference page to `docs/crd-reference.md`
//! (beside DIR), and the runtime config document's JSON Schema to
//! `docs/runtime-config.schema.json`. CI fails when the committed files
//! differ.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("crds"), PathBuf::from);
    std::fs::create_dir_all(&dir)?;
    let crds = operator::crd::all();
    for (file, crd) in &crds {
        let path = dir.join(file);
        std::fs::write(&path, operator::crd::to_yaml(crd)?)?;
        println!("wrote {}", path.display());
    }
    let docs = dir
        .parent()
        .map_or_else(|| PathBuf::from("docs"), |root| root.join("docs"));
    std::fs::create_dir_all(&docs)?;
    let reference = docs.join("crd-reference.md");
    let crds: Vec<_> = crds.into_iter().map(|(_, crd)| crd).collect();
    std::fs::write(&reference, operator::crd::reference::markdown(&crds))?;
    println!("wrote {}", reference.display());
    let schema = docs.join("runtime-config.schema.json");
    std::fs::write(&schema, capture::runtime_config::json_schema())?;
    println!("wrote {}", schema.display());
    Ok(())
}

//! Builds every policy crate in `policies/` (the shipped policies and the broken
//! fixtures) for `wasm32-unknown-unknown` with the `policy` profile, wraps each core
//! module into a component with wit-component (no WASI, no adapter), and writes their
//! paths into `$OUT_DIR/policies.rs`.
//!
//! The nested cargo uses its own target directory (`<target>/policy-wasm`): the outer
//! cargo holds the lock of the main one while build scripts run.
//!
//! The wasm target's standard library must be installed for the toolchain in use. When
//! it is not (a toolchain installed before `rust-toolchain.toml` listed the target, or
//! with `--profile minimal` and no targets), this script installs it with `rustup target
//! add wasm32-unknown-unknown` for the active toolchain, saying so in a cargo warning;
//! only when that is impossible (no rustup, offline) does the build stop, asking for it.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: building the policy components failed: {e}");
        std::process::exit(1);
    }
}

/// `(short name, package name, crate dir)` of each policy crate.
fn policy_crates(root: &Path) -> Result<Vec<(String, String, PathBuf)>, String> {
    let mut dirs = Vec::new();
    for group in ["", "fixtures"] {
        let dir = root.join("policies").join(group);
        let rd = fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in rd.flatten() {
            let path = entry.path();
            if path.join("Cargo.toml").is_file() && path.file_name() != Some("bundle".as_ref()) {
                dirs.push(path);
            }
        }
    }
    dirs.sort();
    let mut out = Vec::new();
    for dir in dirs {
        let manifest = fs::read_to_string(dir.join("Cargo.toml")).map_err(|e| e.to_string())?;
        let package = manifest
            .lines()
            .find_map(|l| l.trim().strip_prefix("name = "))
            .map(|n| n.trim_matches('"').to_owned())
            .ok_or_else(|| format!("{}: no package name", dir.display()))?;
        let short = package
            .strip_prefix("policy-")
            .unwrap_or(&package)
            .to_owned();
        out.push((short, package, dir));
    }
    Ok(out)
}

const WASM_TARGET: &str = "wasm32-unknown-unknown";

const MISSING_TARGET: &str = "\nthe wasm target is missing: run `rustup target add wasm32-unknown-unknown` \
     (rust-toolchain.toml lists it, so rustup normally installs it)";

/// Whether the toolchain's sysroot has the wasm target's standard library (`None` when
/// rustc cannot say: the build then finds out).
fn wasm_target_installed() -> Option<bool> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", WASM_TARGET])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let dir = Path::new(&dir);
    Some(
        fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
            })
            .unwrap_or(false),
    )
}

/// Installs the wasm target for the active toolchain with rustup when it is missing.
/// rustup picks the toolchain the outer cargo runs on: its proxy passes
/// `RUSTUP_TOOLCHAIN` down to this script, and the workspace root (the current
/// directory here) holds `rust-toolchain.toml`.
fn ensure_wasm_target(root: &Path) -> Result<(), String> {
    if wasm_target_installed() != Some(false) {
        return Ok(());
    }
    let toolchain = env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "the active toolchain".into());
    println!(
        "cargo:warning=the {WASM_TARGET} target (needed to build the policy components) is not \
         installed for {toolchain}: installing it with `rustup target add {WASM_TARGET}`"
    );
    let out = Command::new("rustup")
        .current_dir(root)
        .args(["target", "add", WASM_TARGET])
        .output();
    match out {
        Ok(o) if o.status.success() && wasm_target_installed() != Some(false) => {
            println!("cargo:warning=installed the {WASM_TARGET} target for {toolchain}");
            Ok(())
        }
        Ok(o) => Err(format!(
            "`rustup target add {WASM_TARGET}` failed ({}):\n{}{MISSING_TARGET}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!(
            "the {WASM_TARGET} target is not installed and rustup cannot be run ({e}) to \
             install it{MISSING_TARGET}"
        )),
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let root = manifest_dir
        .ancestors()
        .nth(2)
        .ok_or("no workspace root")?
        .to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let target = out_dir.ancestors().nth(4).ok_or("unexpected OUT_DIR")?;
    let wasm_target = target.join("policy-wasm");
    let crates = policy_crates(&root)?;

    println!("cargo:rerun-if-changed={}", root.join("sdk/wit").display());
    println!("cargo:rerun-if-changed={}", root.join("sdk/src").display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("sdk/Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );
    // The workspace manifest holds the `policy` profile the components are built with.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.toml").display()
    );
    for (_, _, dir) in &crates {
        println!("cargo:rerun-if-changed={}", dir.join("src").display());
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("Cargo.toml").display()
        );
    }

    ensure_wasm_target(&root)?;

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--locked", "--profile", "policy"])
        .args(["--target", "wasm32-unknown-unknown"])
        .env("CARGO_TARGET_DIR", &wasm_target)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    for (_, package, _) in &crates {
        cmd.args(["-p", package]);
    }
    let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let hint = if stderr.contains("wasm32-unknown-unknown")
            && stderr.contains("target may not be installed")
        {
            MISSING_TARGET
        } else {
            ""
        };
        return Err(format!(
            "cargo build of the policies failed:\n{stderr}{hint}"
        ));
    }

    let dest = out_dir.join("policies");
    fs::create_dir_all(&dest).map_err(|e| e.to_string())?;
    let mut table = String::from(
        "/// `(name, path)` of every built policy component.\npub const BUILT: &[(&str, &str)] = &[\n",
    );
    for (short, package, _) in &crates {
        let core = wasm_target
            .join("wasm32-unknown-unknown/policy")
            .join(format!("{}.wasm", package.replace('-', "_")));
        let bytes = fs::read(&core).map_err(|e| format!("{}: {e}", core.display()))?;
        let component = wit_component::ComponentEncoder::default()
            .module(&bytes)
            .and_then(|e| e.validate(true).encode())
            .map_err(|e| format!("{package}: cannot make a component: {e:#}"))?;
        let path = dest.join(format!("{short}.wasm"));
        fs::write(&path, component).map_err(|e| format!("{}: {e}", path.display()))?;
        table.push_str(&format!(
            "    ({short:?}, {:?}),\n",
            path.display().to_string()
        ));
    }
    table.push_str("];\n");
    fs::write(out_dir.join("policies.rs"), table).map_err(|e| e.to_string())?;
    Ok(())
}

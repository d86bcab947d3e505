//! `tierkeep-policies list` prints the built components; `tierkeep-policies install DIR`
//! copies the shipped policies into a policy folder (add `--fixtures` for the broken
//! test fixtures too); `tierkeep-policies wrap CORE.wasm OUT.wasm` turns a core module
//! built with the SDK (`cargo build --target wasm32-unknown-unknown`) into a component,
//! like `wasm-tools component new`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("list") => {
            for (name, path) in tierkeep_policies::BUILT {
                println!("{name}\t{path}");
            }
            ExitCode::SUCCESS
        }
        Some("install") if args.len() >= 2 => {
            let dir = PathBuf::from(&args[1]);
            let fixtures = args.iter().any(|a| a == "--fixtures");
            if let Err(e) = std::fs::create_dir_all(&dir) {
                eprintln!("error: cannot create {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
            for (name, path) in tierkeep_policies::BUILT {
                if name.starts_with("fixture-") && !fixtures {
                    continue;
                }
                let to = dir.join(format!("{name}.wasm"));
                // Write beside, then rename: a watching tierkeep never reads half a file.
                let tmp = dir.join(format!(".{name}.wasm.tmp"));
                if let Err(e) = std::fs::copy(path, &tmp).and_then(|_| std::fs::rename(&tmp, &to)) {
                    eprintln!("error: cannot install {}: {e}", to.display());
                    return ExitCode::FAILURE;
                }
                println!("installed {}", to.display());
            }
            ExitCode::SUCCESS
        }
        Some("wrap") if args.len() == 3 => {
            let wrapped = std::fs::read(&args[1])
                .map_err(|e| format!("{}: {e}", args[1]))
                .and_then(|core| {
                    wit_component::ComponentEncoder::default()
                        .module(&core)
                        .and_then(|e| e.validate(true).encode())
                        .map_err(|e| {
                            format!("{}: not a policy module built with the SDK: {e:#}", args[1])
                        })
                })
                .and_then(|c| std::fs::write(&args[2], c).map_err(|e| format!("{}: {e}", args[2])));
            match wrapped {
                Ok(()) => {
                    println!("wrote {}", args[2]);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!(
                "usage: tierkeep-policies list | install DIR [--fixtures] | wrap CORE.wasm OUT.wasm"
            );
            ExitCode::from(2)
        }
    }
}

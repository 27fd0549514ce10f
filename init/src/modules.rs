//! Loading the kernel modules the image carries, every one listed in modules.dep, each after
//! the modules it depends on, through finit_module(2).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use nix::kmod::{ModuleInitFlags, finit_module};

/// finit_module's flag for a compressed module file (Linux 5.17, CONFIG_MODULE_DECOMPRESS).
const MODULE_INIT_COMPRESSED_FILE: i32 = 4;

/// Why the modules could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadModulesError {
    /// modules.dep could not be read.
    #[error("reading {path}")]
    ReadDep {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A module listed as a dependency is not in modules.dep.
    #[error("module {module} needs {dependency}, which modules.dep does not list")]
    MissingDependency {
        /// The dependent.
        module: String,
        /// The missing module.
        dependency: String,
    },
    /// A module file could not be opened or loaded.
    #[error("loading kernel module {path}")]
    Load {
        /// The module file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Parses modules.dep (`path: dependency ...` per line) into each module's dependencies.
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(module, deps)| {
            (
                module.trim().to_string(),
                deps.split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect()
}

/// Every module of `deps` in an order where each comes after its dependencies.
pub fn load_order(deps: &BTreeMap<String, Vec<String>>) -> Result<Vec<String>, LoadModulesError> {
    fn visit(
        module: &str,
        deps: &BTreeMap<String, Vec<String>>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), LoadModulesError> {
        if !done.insert(module.to_string()) {
            return Ok(());
        }
        for dependency in &deps[module] {
            if !deps.contains_key(dependency) {
                return Err(LoadModulesError::MissingDependency {
                    module: module.to_string(),
                    dependency: dependency.clone(),
                });
            }
            visit(dependency, deps, done, order)?;
        }
        order.push(module.to_string());
        Ok(())
    }
    let mut done = BTreeSet::new();
    let mut order = Vec::new();
    for module in deps.keys() {
        visit(module, deps, &mut done, &mut order)?;
    }
    Ok(order)
}

/// Loads every module under `modules_dir` (`/lib/modules/<release>`) in dependency order;
/// one the kernel already has (built in or loaded) is fine. Returns how many were loaded.
pub fn load_modules(modules_dir: &Path) -> Result<usize, LoadModulesError> {
    let dep_file = modules_dir.join("modules.dep");
    let text = match std::fs::read_to_string(&dep_file) {
        Ok(text) => text,
        // An image without modules (a kernel with everything built in).
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(LoadModulesError::ReadDep {
                path: dep_file,
                source,
            });
        }
    };
    let mut loaded = 0;
    for module in load_order(&parse_modules_dep(&text))? {
        let path = modules_dir.join(&module);
        let load = || -> Result<bool, std::io::Error> {
            let file = std::fs::File::open(&path)?;
            let compressed = [".xz", ".zst", ".gz"].iter().any(|s| module.ends_with(s));
            let flags = if compressed {
                ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE as _)
            } else {
                ModuleInitFlags::empty()
            };
            match finit_module(&file, c"", flags) {
                Ok(()) => Ok(true),
                Err(nix::errno::Errno::EEXIST) => Ok(false),
                Err(errno) => Err(errno.into()),
            }
        };
        match load() {
            Ok(true) => loaded += 1,
            Ok(false) => {}
            Err(source) => return Err(LoadModulesError::Load { path, source }),
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_load_first_and_missing_ones_are_named() {
        let deps = parse_modules_dep(
            "kernel/net/bridge/br_netfilter.ko.xz: kernel/net/bridge/bridge.ko.xz kernel/net/802/stp.ko.xz\n\
             kernel/net/bridge/bridge.ko.xz: kernel/net/802/stp.ko.xz\n\
             kernel/net/802/stp.ko.xz:\n",
        );
        assert_eq!(
            load_order(&deps).unwrap(),
            [
                "kernel/net/802/stp.ko.xz",
                "kernel/net/bridge/bridge.ko.xz",
                "kernel/net/bridge/br_netfilter.ko.xz"
            ]
        );
        let broken = parse_modules_dep("a.ko: b.ko\n");
        let err = load_order(&broken).unwrap_err();
        assert_eq!(
            err.to_string(),
            "module a.ko needs b.ko, which modules.dep does not list"
        );
    }
}

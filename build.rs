//! Lays the release binary's hot code out together: when `hot-code.order` (written by
//! scripts/record-hot-code) is present, lld places the functions it lists first, in its
//! order, so that each role's code shares pages instead of being spread over the binary
//! (every process maps the pages its code lies in; see docs/benchmarks.md, "Hot code
//! order"). Debug builds keep the default layout.
//!
//! Every build packs the binary's relative relocations (`-z pack-relative-relocs`, DT_RELR,
//! which glibc's static-pie start-up applies since 2.36): a static-pie is relocated by its own
//! start-up code in every process, which read the whole `.rela.dyn` table (24 bytes a pointer,
//! megabytes in all) into each process's memory; packed, the table is a few kilobytes.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=hot-code.order");
    println!("cargo:rustc-link-arg-bin=baton=-Wl,-z,pack-relative-relocs");
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let order = Path::new(&dir).join("hot-code.order");
    if std::env::var("PROFILE").as_deref() == Ok("release") && order.exists() {
        println!(
            "cargo:rustc-link-arg-bin=baton=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        // The file names the functions of the build it was recorded from; one that is gone
        // or renamed since is skipped.
        println!("cargo:rustc-link-arg-bin=baton=-Wl,--no-warn-symbol-ordering");
    }
}

//! The fuzz corpus, replayed: every input under `fuzz/corpus/TARGET/` and
//! `fuzz/regressions/TARGET/` through its target's checks, in a plain
//! `cargo test`, so a crash the fuzzers found and that was fixed stays fixed.
//!
//! A new crash: copy its input from `fuzz/artifacts/TARGET/` to
//! `fuzz/regressions/TARGET/NAME` (NAME saying what it was), write a unit
//! test beside the code it broke, and fix it.

use std::path::Path;

#[test]
fn every_corpus_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (target, check) in percore::fuzzing::TARGETS {
        assert!(
            root.join("fuzz_targets")
                .join(format!("{target}.rs"))
                .is_file(),
            "fuzz/fuzz_targets/{target}.rs is missing"
        );
        let mut of_target = 0;
        for folder in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(folder).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("a corpus entry").path();
                let input = std::fs::read(&path).expect("a corpus input");
                if std::panic::catch_unwind(|| check(&input)).is_err() {
                    failures.push(path.display().to_string());
                }
                of_target += 1;
            }
        }
        assert!(of_target > 0, "no corpus for the fuzz target {target}");
        replayed += of_target;
    }
    assert!(
        failures.is_empty(),
        "inputs that fail their target: {failures:#?}"
    );
    println!(
        "{replayed} inputs of {} targets replayed",
        percore::fuzzing::TARGETS.len()
    );
}

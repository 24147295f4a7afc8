//! The committed man pages must match the clap definitions. Regenerate with
//! `UPDATE_MAN=1 cargo test --test manpages`.

use std::path::Path;

#[test]
fn man_pages_are_up_to_date() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let pages = planelink::manpages::render_all().expect("render man pages");
    assert_eq!(pages.len(), 5, "planelink.1 and one page per role");
    let update = std::env::var_os("UPDATE_MAN").is_some();
    let mut stale = Vec::new();
    for (name, text) in pages {
        let path = dir.join(&name);
        if update {
            std::fs::write(&path, &text).expect("write man page");
            continue;
        }
        match std::fs::read(&path) {
            Ok(committed) if committed == text => {}
            _ => stale.push(name),
        }
    }
    assert!(
        stale.is_empty(),
        "man pages out of date: {stale:?}; regenerate with `UPDATE_MAN=1 cargo test --test manpages` and commit man/"
    );
}

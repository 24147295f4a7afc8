//! Man pages rendered from the same clap definitions that parse the command line:
//! `planelink.1` and one page per role.

use crate::cli::{Role, role_command};

/// Every page as (file name, roff text).
pub fn render_all() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut pages = Vec::new();
    let mut top = Vec::new();
    clap_mangen::Man::new(crate::cli::command()).render(&mut top)?;
    pages.push(("planelink.1".to_string(), top));
    for role in Role::ALL {
        let name = format!("planelink-{}", role.name());
        let mut page = Vec::new();
        clap_mangen::Man::new(role_command(role, &name)).render(&mut page)?;
        pages.push((format!("{name}.1"), page));
    }
    Ok(pages)
}

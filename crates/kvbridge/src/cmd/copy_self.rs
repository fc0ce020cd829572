//! `kvbridge copy-self DEST`: this binary copied to `DEST` (mode 0755, atomically): what the
//! webhook's init container runs to put `kvbridge` into the pod's memory volume.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;

use anyhow::Context as _;

#[derive(clap::Args)]
pub struct Args {
    /// Destination file.
    dest: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut tmp_name = args.dest.clone().into_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let copy = || -> std::io::Result<()> {
        let mut src = std::fs::File::open(&exe)?;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&tmp)?;
        std::io::copy(&mut src, &mut out)?;
        out.flush()?;
        out.sync_all()?;
        std::fs::rename(&tmp, &args.dest)
    };
    if let Err(e) = copy() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e)
            .with_context(|| format!("cannot copy {} to {}", exe.display(), args.dest.display()));
    }
    println!("copied {} to {}", exe.display(), args.dest.display());
    Ok(())
}

//! Writing secret material to disk with owner-only permissions.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

/// Writes `contents` to `path` with mode 0600 (owner read/write only), creating
/// the parent directory. Refuses to overwrite an existing file unless `overwrite`.
pub fn write_private(path: &Path, contents: &[u8], overwrite: bool) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = OpenOptions::new();
    options.write(true);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        // The mode above only applies to new files; tighten an overwritten one too.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(contents)?;
    file.sync_all()
}

/// Writes a public file (certificate) with normal permissions.
pub(crate) fn write_public(path: &Path, contents: &[u8], overwrite: bool) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = OpenOptions::new();
    options.write(true);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

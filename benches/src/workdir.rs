//! Where a benchmark keeps its configs, logs and databases.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The directory given (created, absolute), or a temporary one removed
/// when this is dropped.
pub struct WorkDir {
    path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl WorkDir {
    /// `given`, or a new temporary directory named `prefix…`.
    pub fn new(given: Option<&Path>, prefix: &str) -> Result<WorkDir> {
        Ok(match given {
            Some(d) => {
                std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
                WorkDir {
                    path: std::fs::canonicalize(d)?,
                    _temp: None,
                }
            }
            None => {
                let temp = tempfile::Builder::new().prefix(prefix).tempdir()?;
                WorkDir {
                    path: temp.path().to_path_buf(),
                    _temp: Some(temp),
                }
            }
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

//! The commands of `lab`, one module each: what a command asks of the stages and how it renders
//! their answers. What several commands share is here: the matrix with its recipes and cells,
//! the checkout's files, the output directory.

pub mod args;
pub mod build;
pub mod doctor;
pub mod hold;
pub mod model;
pub mod results;
pub mod run;
pub mod series;
pub mod triage;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use xshell::Shell;

use crate::cache::Cache;
use crate::kernel::{self, Recipe};
use crate::ui::Ui;
use crate::{image, matrix, plan};

use args::Select;

/// The checkout this binary was built from: default matrix, recipes and guest sources live there.
pub const PROJECT_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// What every command runs with. The cache is opened only by a command that comes to need it,
/// at that point: opening it creates its directory.
pub struct Env {
    pub sh: Shell,
    pub ui: Ui,
    cache_dir: Option<PathBuf>,
}

impl Env {
    pub fn new(cache_dir: Option<PathBuf>, verbose: bool) -> Result<Env> {
        Ok(Env { sh: Shell::new()?, ui: Ui::new(verbose), cache_dir })
    }

    pub fn cache(&self) -> Result<Cache> {
        Cache::new(self.cache_dir.clone())
    }
}

/// Everything a command needs that comes from the matrix.
pub struct Loaded {
    pub matrix: matrix::LoadedMatrix,
    pub recipes: Vec<Recipe>,
    pub cells: Vec<plan::Cell>,
}

pub fn images_dir() -> PathBuf {
    Path::new(PROJECT_DIR).join("images")
}

pub fn load(select: &Select) -> Result<Loaded> {
    let matrix = load_matrix(select)?;
    let recipes = matrix
        .recipe_paths()
        .iter()
        .enumerate()
        .map(|(i, p)| kernel::recipe::load(p).with_context(|| matrix.at(&matrix::node!["kernels", i, "recipe"])))
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = recipes.iter().map(|r| r.name.clone()).collect();
    // Cells are named by recipe name: two recipes of one name would run under one cell id.
    if let Some((i, j)) = (0..names.len()).find_map(|i| names[..i].iter().position(|n| *n == names[i]).map(|j| (i, j)))
    {
        let at = matrix.at(&matrix::node!["kernels", i, "recipe"]);
        let other = matrix.matrix.kernels[j].recipe.display();
        anyhow::bail!(
            "{at}: kernel recipe `{}` has the name of kernel {} (`{other}`): give each its own `name`",
            names[i],
            j + 1
        );
    }
    let cells = plan::cells(&matrix.matrix, &names, &select.filter)?;
    Ok(Loaded { matrix, recipes, cells })
}

/// `--matrix` (default: the checkout's matrix.yaml), checked against the workloads there are.
pub fn load_matrix(select: &Select) -> Result<matrix::LoadedMatrix> {
    let path = select.matrix.clone().unwrap_or_else(|| Path::new(PROJECT_DIR).join("matrix.yaml"));
    let programs = image::workload_programs(&images_dir())?;
    matrix::load(&path, &programs)
}

/// `--out`, which must be new or empty, else a new directory under lab-out/ named for now.
pub fn out_dir(out: Option<PathBuf>) -> Result<PathBuf> {
    match out {
        Some(out) => {
            crate::run::check_out_dir(&out)?;
            Ok(out)
        }
        None => Ok(crate::run::default_out(Path::new("lab-out"))),
    }
}

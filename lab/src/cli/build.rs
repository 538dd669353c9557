//! `lab build` and `lab image`: the kernels and guest images a run would use, built or found in
//! the cache, and where they are.

use std::process::ExitCode;

use anyhow::Result;

use super::args::KernelArgs;
use super::{images_dir, load, Env};
use crate::arch::Arch;
use crate::image;
use crate::kernel::{self, Recipe};

pub fn build(env: &Env, args: KernelArgs) -> Result<ExitCode> {
    let KernelArgs { select, recipe, arch, build, json } = args;
    // What to build: the recipe given, for --arch or all; else every kernel x arch of the
    // cells the matrix and its filters select (narrowed by --arch).
    let (recipes, pairs): (Vec<Recipe>, Vec<(usize, Arch)>) = match recipe {
        Some(path) => {
            let arches = if arch.is_empty() { Arch::ALL.to_vec() } else { arch };
            (vec![kernel::recipe::load(&path)?], arches.into_iter().map(|a| (0, a)).collect())
        }
        None => {
            let loaded = load(&select)?;
            let pairs = kernel_arches(loaded.cells.iter().map(|c| (c.kernel, c.arch)), &arch);
            (loaded.recipes, pairs)
        }
    };
    let cache = env.cache()?;
    let mut kernels = Vec::new();
    for (index, a) in pairs {
        let k = kernel::build(&env.sh, &cache, &recipes[index], a, &build.options(), &env.ui)?;
        if !json {
            println!("{} {}: {} {}", k.recipe, k.arch, if k.cached { "cached" } else { "built" }, k.dir.display());
        }
        kernels.push(k);
    }
    if json {
        let rows: Vec<serde_json::Value> = kernels
            .iter()
            .map(|k| serde_json::json!({"kernel": k, "cached": k.cached, "selftests": k.selftests}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// Each kernel x arch of the cells once, in order, only the arches asked for (all when none).
fn kernel_arches(cells: impl Iterator<Item = (usize, Arch)>, arches: &[Arch]) -> Vec<(usize, Arch)> {
    let mut pairs: Vec<(usize, Arch)> = cells.filter(|(_, a)| arches.is_empty() || arches.contains(a)).collect();
    pairs.sort();
    pairs.dedup();
    pairs
}

pub fn image(env: &Env, arch: Vec<Arch>) -> Result<ExitCode> {
    let cache = env.cache()?;
    for a in if arch.is_empty() { Arch::ALL.to_vec() } else { arch } {
        let image = image::build(&env.sh, &cache, &images_dir(), a, &env.ui)?;
        println!("{a}: {} {}", if image.cached { "cached" } else { "built" }, image.initramfs.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Arch::*;

    #[test]
    fn each_kernel_is_built_once_per_arch_asked_for() {
        let cells = [(0, X86_64), (0, X86_64), (1, Ppc64le), (0, Aarch64), (1, X86_64), (0, X86_64)];
        let check = |arches: &[Arch], want: &[(usize, Arch)]| {
            assert_eq!(kernel_arches(cells.iter().copied(), arches), want, "{arches:?}");
        };
        check(&[], &[(0, X86_64), (0, Aarch64), (1, X86_64), (1, Ppc64le)]);
        check(&[X86_64], &[(0, X86_64), (1, X86_64)]);
        check(&[Ppc64le, Aarch64], &[(0, Aarch64), (1, Ppc64le)]);
    }
}

//! Presets, read from the `configs/` folder at run time: preset `<name>` of
//! group `<group>` is the file `configs/<group>/<name>.toml`, so adding a
//! config file adds a preset. Consistency training names its files
//! `configs/ct/<preset>-<recipe>.toml`.

use std::fs;
use std::path::Path;

/// The preset used when `--preset` is not given.
pub const DEFAULT_PRESET: &str = "fmnist";

/// The consistency-training recipe used when `--recipe` is not given.
pub const DEFAULT_RECIPE: &str = "ict";

/// The preset names of `group`: the `.toml` files of `root/configs/<group>`,
/// without the extension, sorted. Empty when the folder is missing.
pub fn available(root: &Path, group: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir(root.join("configs").join(group)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}

/// `configs/<group>/<name>.toml` (relative to the workspace root), when that
/// file exists under `root`; otherwise an error listing the presets there.
pub fn config_path(root: &Path, group: &str, name: &str) -> Result<String, String> {
    let relative = format!("configs/{group}/{name}.toml");
    if root.join(&relative).is_file() {
        return Ok(relative);
    }
    Err(format!(
        "unknown preset `{name}`: no {relative}; presets: {}",
        list(&available(root, group))
    ))
}

/// The consistency-training recipes: the `-<recipe>` suffixes of
/// `configs/ct/*.toml`, sorted, without repeats.
pub fn ct_recipes(root: &Path) -> Vec<String> {
    let mut recipes: Vec<String> = available(root, "ct")
        .iter()
        .filter_map(|n| n.rsplit_once('-').map(|(_, r)| r.to_string()))
        .collect();
    recipes.sort();
    recipes.dedup();
    recipes
}

/// The consistency-training presets of `recipe`: `P` for every
/// `configs/ct/P-<recipe>.toml`, sorted.
pub fn ct_presets(root: &Path, recipe: &str) -> Vec<String> {
    available(root, "ct")
        .iter()
        .filter_map(|n| n.strip_suffix(&format!("-{recipe}")).map(str::to_string))
        .collect()
}

/// `configs/ct/<preset>-<recipe>.toml` when it exists; otherwise an error
/// naming the unknown recipe or preset with the ones available.
pub fn ct_config_path(root: &Path, preset: &str, recipe: &str) -> Result<String, String> {
    let recipes = ct_recipes(root);
    if !recipes.iter().any(|r| r == recipe) {
        return Err(format!(
            "unknown recipe `{recipe}`; recipes: {}",
            list(&recipes)
        ));
    }
    let relative = format!("configs/ct/{preset}-{recipe}.toml");
    if root.join(&relative).is_file() {
        return Ok(relative);
    }
    Err(format!(
        "unknown preset `{preset}` for recipe `{recipe}`: no {relative}; presets: {}",
        list(&ct_presets(root, recipe))
    ))
}

/// `a, b, c`, or `(none)` for an empty list.
fn list(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::temp_dir;

    #[test]
    fn presets_are_the_config_files() {
        let dir = temp_dir("presets");
        fs::create_dir_all(dir.join("configs/cd")).unwrap();
        fs::create_dir_all(dir.join("configs/ct")).unwrap();
        for f in [
            "cd/b.toml",
            "cd/a.toml",
            "cd/notes.md",
            "ct/a-ict.toml",
            "ct/b-ct.toml",
        ] {
            fs::write(dir.join("configs").join(f), "").unwrap();
        }
        assert_eq!(available(&dir, "cd"), ["a", "b"]);
        assert!(available(&dir, "eval").is_empty());
        assert_eq!(config_path(&dir, "cd", "b").unwrap(), "configs/cd/b.toml");
        let err = config_path(&dir, "cd", "c").unwrap_err();
        assert!(
            err.contains("`c`") && err.contains("presets: a, b"),
            "{err}"
        );
        assert!(config_path(&dir, "eval", "a")
            .unwrap_err()
            .contains("(none)"));

        assert_eq!(ct_recipes(&dir), ["ct", "ict"]);
        assert_eq!(ct_presets(&dir, "ict"), ["a"]);
        assert_eq!(
            ct_config_path(&dir, "a", "ict").unwrap(),
            "configs/ct/a-ict.toml"
        );
        let err = ct_config_path(&dir, "a", "ct").unwrap_err();
        assert!(err.contains("`a`") && err.contains("presets: b"), "{err}");
        let err = ct_config_path(&dir, "a", "lcm").unwrap_err();
        assert!(
            err.contains("`lcm`") && err.contains("recipes: ct, ict"),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}

# TEST STAND-IN for nixpkgs' `pkgs`: store paths are fake, and `formats.toml` keeps the value
# it would render so the test can read the generated hive.toml as data.
let
  drv = name: { inherit name; type = "derivation"; outPath = "/nix/store/00000000000000000000000000000000-${name}"; };
in
{
  git = drv "git";
  bubblewrap = drv "bubblewrap";
  nixos-container = drv "nixos-container";
  callPackage = _path: _args: drv "hyperhive";
  formats.toml = _: {
    type = { _type = "type"; name = "toml"; };
    generate = name: value: drv name // { rendered = value; };
  };
}

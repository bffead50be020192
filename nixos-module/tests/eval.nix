# Evaluates module.nix against the stand-in lib/pkgs with a sample configuration and returns
# the generated NixOS settings as plain data (`nix-instantiate --eval --strict --json`).
# A structural check only; see docs/nixos.md for the VM test that boots a real hive.
{ user ? { } }:
let
  lib = import ./fixture-lib.nix;
  pkgs = import ./fixture-pkgs.nix;
  module = import ../module.nix;

  sample = lib.recursiveUpdate {
    enable = true;
    adminUsers = [ "ops" ];
    agents = {
      boss = { role = "manager"; model = "opus"; };
      alice = { env = { LANG = "C.UTF-8"; }; allowedRecipients = [ "boss" ]; limits.memoryMB = 2048; };
      bob = { runtime = "scripted"; };
    };
  } user;

  declared = (module { config = { }; inherit lib pkgs; }).options.services.hyperhive;

  isOption = v: builtins.isAttrs v && (v._type or null) == "option";
  # fill an option tree's defaults under the user's values, as the module system would
  withDefaults = options: values:
    builtins.mapAttrs
      (name: opt:
        if isOption opt then
          let v = values.${name} or opt.default; in
          if (opt.type.name or null) == "attrsOf" && (opt.type.elem.name or null) == "submodule"
          then builtins.mapAttrs (n: sub: withDefaults (opt.type.elem.module { name = n; }).options sub) v
          else v
        else withDefaults opt (values.${name} or { }))
      options;

  cfg = withDefaults declared sample;
  generated = (module {
    config = { services.hyperhive = cfg; system.stateVersion = "24.11"; };
    inherit lib pkgs;
  }).config;

  # mkIf / mkMerge resolved the way NixOS merges definitions: attrs recursively, lists appended
  merge = a: b:
    if builtins.isAttrs a && builtins.isAttrs b then
      a // builtins.mapAttrs (n: v: if a ? ${n} then merge a.${n} v else v) b
    else if builtins.isList a && builtins.isList b then a ++ b
    else b;
  resolve = v:
    if builtins.isAttrs v && (v._type or null) == "if" then (if v.condition then resolve v.content else { })
    else if builtins.isAttrs v && (v._type or null) == "merge" then builtins.foldl' merge { } (map resolve v.contents)
    else if builtins.isAttrs v && (v.type or null) != "derivation" then builtins.mapAttrs (_: resolve) v
    else v;
  out = resolve generated;
in
out // {
  # the containers' inner configs are modules (functions): apply them for inspection
  containers = builtins.mapAttrs (_: c: c // { config = c.config { }; }) (out.containers or { });
  hiveToml = out.environment.etc."hyperhive/hive.toml".source.rendered or null;
}

# TEST STAND-IN for nixpkgs' `lib` (no nixpkgs here): only the functions module.nix uses, with
# just enough semantics to evaluate it structurally. mkIf / mkMerge become markers that
# eval.nix resolves; option declarations keep their type and default. This is not the NixOS
# module system: it checks what the module generates, not that NixOS accepts it.
let
  foldl = builtins.foldl';
  recursiveUpdate = lhs: rhs:
    lhs // builtins.mapAttrs
      (name: value:
        if builtins.isAttrs value && builtins.isAttrs (lhs.${name} or null)
        then recursiveUpdate lhs.${name} value
        else value)
      rhs;
  type = name: extra: { _type = "type"; inherit name; } // extra;
in
rec {
  inherit recursiveUpdate;
  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption = description: mkOption { type = types.bool; default = false; inherit description; };
  mkIf = condition: content: { _type = "if"; inherit condition content; };
  mkMerge = contents: { _type = "merge"; inherit contents; };
  mkDefault = value: value;
  mapAttrs = builtins.mapAttrs;
  nameValuePair = name: value: { inherit name value; };
  mapAttrs' = f: set: builtins.listToAttrs (map (name: f name set.${name}) (builtins.attrNames set));
  filterAttrs = pred: set:
    builtins.listToAttrs (builtins.concatMap
      (name: if pred name set.${name} then [ { inherit name; value = set.${name}; } ] else [ ])
      (builtins.attrNames set));
  optionalAttrs = cond: set: if cond then set else { };
  optional = cond: x: if cond then [ x ] else [ ];
  attrNames = builtins.attrNames;
  types = {
    bool = type "bool" { };
    str = type "str" { };
    int = type "int" { };
    number = type "number" { };
    port = type "port" { };
    package = type "package" { };
    enum = values: type "enum" { inherit values; };
    listOf = elem: type "listOf" { inherit elem; };
    nullOr = elem: type "nullOr" { inherit elem; };
    attrsOf = elem: type "attrsOf" { inherit elem; };
    submodule = module: type "submodule" { inherit module; };
  };
}

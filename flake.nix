{
  description = "hyperhive: a host for a swarm of AI coding agents";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (pkgs: {
        default = pkgs.callPackage ./nixos-module/package.nix { };
      });

      nixosModules.default = { pkgs, ... }: {
        imports = [ ./nixos-module/module.nix ];
        services.hyperhive.package = nixpkgs.lib.mkDefault self.packages.${pkgs.system}.default;
      };

      checks = forAll (pkgs: {
        vm = pkgs.testers.runNixOSTest (import ./nixos-module/tests/vm-test.nix { module = self.nixosModules.default; });
      });
    };
}

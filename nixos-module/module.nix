# services.hyperhive: a hive on NixOS. A root daemon unit (hive-c0re) owns containers, git,
# sqlite and the sockets; an unprivileged, hardened web unit (hive-web) reaches it only
# through web.sock; each agent runs in a declarative nixos-container h-<name> that the daemon
# starts and stops. See docs/nixos.md.
{ config, lib, pkgs, ... }:

let
  inherit (lib)
    mkOption mkEnableOption mkIf mkMerge types mapAttrs mapAttrs' nameValuePair
    optionalAttrs optional filterAttrs attrNames;

  cfg = config.services.hyperhive;
  toml = pkgs.formats.toml { };
  hive = "${cfg.package}/bin/hive";
  ag3nt = "${cfg.package}/bin/ag3nt"; # in-container entry point: never loads the daemon package

  agentState = name: "${cfg.stateDir}/agents/${name}/state";
  agentSocket = name: "${cfg.runDir}/agents/${name}.sock";
  sharedDir = "${cfg.stateDir}/shared";
  stateDirMode = if cfg.backend == "process" then "0711" else "0700";

  # One [agents.<name>] table of hive.toml (the daemon's AgentConfig keys).
  agentToml = name: a:
    { inherit (a) role model runtime env; }
    // optionalAttrs (a.allowedRecipients != null) { allowed_recipients = a.allowedRecipients; }
    // optionalAttrs (a.limits.memoryMB != null) { memory_mb = a.limits.memoryMB; }
    // optionalAttrs (a.limits.cpus != null) { cpus = a.limits.cpus; }
    // optionalAttrs (a.limits.pids != null) { pids = a.limits.pids; };

  hiveToml = toml.generate "hive.toml" (lib.recursiveUpdate {
    hive = {
      state_dir = cfg.stateDir;
      run_dir = cfg.runDir;
      backend = cfg.backend;
      nixos_declarative = cfg.backend == "nixos";
      shared_dir = sharedDir;
      admin_group = "hive-admin";
      web_group = "hive-web";
      web_port = cfg.web.port;
    };
    agents = mapAttrs agentToml cfg.agents;
  } cfg.settings);

  # The agent's container: its state dir and /shared at the same paths as on the host, its
  # socket and nothing else of the run dir; a manager also sees every agent's state, read-only.
  agentContainer = name: a: {
    autoStart = false; # the daemon starts, supervises and restarts it
    ephemeral = true; # everything worth keeping lives in the bound state dir
    bindMounts = {
      "${agentState name}" = { hostPath = agentState name; isReadOnly = false; };
      "/shared" = { hostPath = sharedDir; isReadOnly = false; };
      "${agentSocket name}" = { hostPath = agentSocket name; isReadOnly = false; };
    } // optionalAttrs (a.role == "manager") (mapAttrs'
      (peer: _: nameValuePair (agentState peer) { hostPath = agentState peer; isReadOnly = true; })
      (filterAttrs (peer: _: peer != name) cfg.agents));
    config = { ... }: {
      system.stateVersion = config.system.stateVersion;
      environment.systemPackages = [ cfg.package ] ++ a.packages;
      systemd.services.hive-agent = {
        description = "hyperhive harness for ${name}";
        wantedBy = [ "multi-user.target" ];
        environment = a.env // {
          HIVE_AGENT_SOCKET = agentSocket name;
          HIVE_AGENT_NAME = name;
          HIVE_AGENT_MODEL = a.model;
          HOME = agentState name;
        };
        serviceConfig = {
          ExecStart = "${ag3nt} serve --runtime ${a.runtime} --socket ${agentSocket name} --state-dir ${agentState name}";
          WorkingDirectory = agentState name;
          Restart = "on-failure";
          RestartSec = 5;
        };
      };
    };
  };

  agentOptions = { name, ... }: {
    options = {
      role = mkOption {
        type = types.enum [ "agent" "manager" ];
        default = "agent";
        description = "A manager also sees every agent's state (read-only) and gets the manager tools.";
      };
      model = mkOption {
        type = types.str;
        default = "";
        description = "Model the runtime uses; empty for the runtime's default.";
      };
      runtime = mkOption {
        type = types.enum [ "claude" "scripted" ];
        default = "claude";
        description = "claude (Claude Code CLI) or scripted (deterministic rules, offline).";
      };
      packages = mkOption {
        type = types.listOf types.package;
        default = [ ];
        description = "Extra packages in the agent's container.";
      };
      env = mkOption {
        type = types.attrsOf types.str;
        default = { };
        description = "Extra environment for the agent's harness (names starting HIVE_ are refused). Values land in the Nix store: pass secrets with `hive ctl login` instead.";
      };
      allowedRecipients = mkOption {
        type = types.nullOr (types.listOf types.str);
        default = null;
        description = "Agents (and/or \"*\") this agent may message; null allows everyone. The operator is always allowed.";
      };
      limits = {
        memoryMB = mkOption { type = types.nullOr types.int; default = null; description = "Memory limit in MiB."; };
        cpus = mkOption { type = types.nullOr types.number; default = null; description = "CPU limit in cores."; };
        pids = mkOption { type = types.nullOr types.int; default = null; description = "Limit on processes and threads."; };
      };
    };
  };
in
{
  options.services.hyperhive = {
    enable = mkEnableOption "hyperhive, a host for a swarm of AI coding agents";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      description = "The hyperhive package (provides `hive`).";
    };

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/hyperhive";
      description = "Daemon state: sqlite, agents' state dirs, tombstones, secrets.";
    };

    runDir = mkOption {
      type = types.str;
      default = "/run/hyperhive";
      description = "Sockets: admin.sock, web.sock, agents/<name>.sock.";
    };

    adminUsers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Users added to the hive-admin group, which may use admin.sock (`hive ctl`).";
    };

    backend = mkOption {
      type = types.enum [ "nixos" "bwrap" "process" ];
      default = "nixos";
      description = "How agents are isolated: declarative nixos-containers (default), bubblewrap, or none.";
    };

    web = {
      enable = mkOption { type = types.bool; default = true; description = "Run the dashboard (hive-web.service)."; };
      listen = mkOption { type = types.str; default = "127.0.0.1"; description = "Address the dashboard binds."; };
      port = mkOption { type = types.port; default = 8765; description = "Dashboard port."; };
      openFirewall = mkOption { type = types.bool; default = false; description = "Open the dashboard port in the firewall."; };
    };

    agents = mkOption {
      type = types.attrsOf (types.submodule agentOptions);
      default = { };
      description = "The agents of the hive, by name.";
    };

    settings = mkOption {
      type = toml.type;
      default = { };
      description = "Extra hive.toml settings, merged over the generated ones (see docs/operating.md).";
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      users.groups.hive-admin.members = cfg.adminUsers;
      users.groups.hive-web = { };
      users.users.hive-web = {
        isSystemUser = true;
        group = "hive-web";
        description = "hyperhive dashboard";
      };

      environment.systemPackages = [ cfg.package ];
      environment.etc."hyperhive/hive.toml".source = hiveToml;

      # the daemon's state is its own (it checks these modes at every start); only the
      # process backend, with no sandbox, needs agents' uids to pass through to their dirs
      systemd.tmpfiles.rules = [
        "d ${cfg.stateDir} ${stateDirMode} root root -"
        "d ${cfg.stateDir}/agents ${stateDirMode} root root -"
        "d ${sharedDir} 1777 root root -"
        "d ${cfg.runDir} 0751 root root -"
        "d ${cfg.runDir}/agents 0711 root root -"
      ];

      systemd.services.hive-c0re = {
        description = "hyperhive daemon (c0re)";
        wantedBy = [ "multi-user.target" ];
        after = [ "network.target" ];
        path = [ pkgs.git ] ++ optional (cfg.backend == "nixos") pkgs.nixos-container
          ++ optional (cfg.backend == "bwrap") pkgs.bubblewrap;
        restartTriggers = [ hiveToml ];
        serviceConfig = {
          Type = "notify";
          NotifyAccess = "main";
          User = "root";
          ExecStart = "${hive} c0re --state-dir ${cfg.stateDir} --run-dir ${cfg.runDir} --config ${hiveToml}";
          Restart = "on-failure";
          RestartSec = 5;
          TimeoutStopSec = 90;
        };
      };
    }

    (mkIf cfg.web.enable {
      systemd.services.hive-web = {
        description = "hyperhive dashboard (unprivileged)";
        wantedBy = [ "multi-user.target" ];
        after = [ "hive-c0re.service" ];
        wants = [ "hive-c0re.service" ];
        serviceConfig = {
          ExecStart = "${hive} web --run-dir ${cfg.runDir} --bind ${cfg.web.listen}:${toString cfg.web.port}";
          User = "hive-web";
          Group = "hive-web";
          Restart = "on-failure";
          RestartSec = 5;
          NoNewPrivileges = true;
          ProtectSystem = "strict";
          ProtectHome = true;
          PrivateTmp = true;
          PrivateDevices = true;
          ProtectKernelTunables = true;
          ProtectKernelModules = true;
          ProtectControlGroups = true;
          RestrictNamespaces = true;
          RestrictSUIDSGID = true;
          LockPersonality = true;
          MemoryDenyWriteExecute = true;
          SystemCallArchitectures = "native";
          # AF_NETLINK: one sock_diag lookup per connection tells which local uid holds it,
          # so each agent has its own allowance of dashboard connections (docs/web.md)
          RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" "AF_NETLINK" ];
          CapabilityBoundingSet = "";
          AmbientCapabilities = "";
          ReadOnlyPaths = [ cfg.runDir ];
          InaccessiblePaths = [ cfg.stateDir ];
        };
      };
      networking.firewall.allowedTCPPorts = optional cfg.web.openFirewall cfg.web.port;
    })

    (mkIf (cfg.backend == "nixos") {
      containers = mapAttrs' (name: a: nameValuePair "h-${name}" (agentContainer name a)) cfg.agents;
    })
  ]);
}

import {
  defaultTokenFile,
  generateToken,
  removeTokenFile,
  TokenFileError,
  writeTokenFile,
} from "./api_token.ts";
import { CliError, HELP, parseFlags } from "./cli.ts";
import { Engine } from "./engine/engine.ts";
import { HistoryError, MigrationHistory } from "./engine/history.ts";
import { createApp } from "./routes/app.ts";
import { isWildcardHost } from "./routes/host_check.ts";
import { createTransports } from "./transports/mod.ts";
import { openLoopTurn } from "./transports/loop_turn.ts";
import { warmStreamBuffers } from "./engine/format/buffers.ts";
import { warmUp } from "./engine/warmup.ts";
import { warmUpSendBuffer } from "./transports/send_buffer.ts";
import { Vm, VmError } from "./vm/vm.ts";
import { X86ImageError } from "./vm/x86/guest_image.ts";
import { readBootImages } from "./vm/x86/images.ts";
import { X86Guest } from "./vm/x86/x86_guest.ts";
import { sectionsFor } from "./engine/sections/registry.ts";
import { qemuSections } from "./engine/qemu_profile.ts";
import { QemuImage } from "./vm/qemu_image.ts";
import { DiskError } from "./vm/disk.ts";
import { loadDashboard } from "./web/dashboard.ts";

/** CLI flags → guest + engine + API → Deno.serve. Nothing else lives here. */
async function main(): Promise<number> {
  let config;
  try {
    config = parseFlags(Deno.args, { FERRY_TOKEN: Deno.env.get("FERRY_TOKEN") });
  } catch (e) {
    if (e instanceof CliError) {
      console.error(`ferry: ${e.message}`);
      return 2;
    }
    throw e;
  }
  if (config.help) {
    console.log(HELP);
    return 0;
  }
  let vm: Vm | X86Guest | QemuImage;
  try {
    vm = config.peer === "qemu"
      ? QemuImage.create({ ramSize: config.ramSize, fill: config.fill, prefault: config.prefault })
      : config.guest === "x86"
      ? await X86Guest.create({
        ramSize: config.ramSize,
        prefault: config.prefault,
        ...(await readBootImages(config.x86)),
      })
      : await Vm.create({
        ramSize: config.ramSize,
        workload: config.workload,
        fill: config.fill,
        ...(config.image !== undefined ? { image: config.image } : {}),
        prefault: config.prefault,
        ...(config.disk ? { disk: { path: config.disk, size: config.diskSize } } : {}),
      });
  } catch (e) {
    if (!(e instanceof DiskError || e instanceof X86ImageError || e instanceof VmError)) throw e;
    console.error(`ferry: ${e.message}`);
    return 1;
  }
  const transports = createTransports({
    allowExec: config.allowExec,
    insecureMigration: config.insecureMigration,
  });
  // Fault the stream buffers in now rather than during a migration, and keep the
  // cheap event-loop turn the migration loops use to let the API in.
  warmStreamBuffers();
  using loop = await openLoopTurn();
  const turn = loop.cheap ? () => loop.turn() : undefined;
  // One small in-process migration compiles the whole migration path before the
  // first real one (it would otherwise pay for it inside its downtime).
  await warmUp(transports, turn);
  // Loads libc and lists the descriptors once, so the first unix: migration does
  // not pay ~6 ms for it in its setup.
  warmUpSendBuffer();
  let history: MigrationHistory | undefined;
  if (config.stateDir !== undefined) {
    try {
      history = await MigrationHistory.open(config.stateDir);
    } catch (e) {
      if (!(e instanceof HistoryError)) throw e;
      console.error(`ferry: ${e.message}`);
      await vm.close();
      return 1;
    }
  }
  const engine = new Engine({
    guest: vm,
    sections: vm instanceof QemuImage ? qemuSections(vm) : sectionsFor(vm),
    transports,
    autostart: config.autostart,
    turn,
    ...(history ? { history } : {}),
  });
  // The --param and security flags are the parameters the engine starts with.
  engine.setParameters({ ...config.parameters, ...config.security });
  // QEMU's streams carry no integrity record (docs/ARCHITECTURE.md, "QEMU peers").
  if (vm instanceof QemuImage) engine.setCapabilities({ verify: false });
  // Every request needs the token, given or generated, except GET / (the dashboard page
  // holds no data: a browser cannot send a bearer header when it navigates, so the page
  // takes it from its URL's fragment or asks).
  const token = config.token ?? generateToken();
  const dashboard = await loadDashboard({ tokenRequired: true });
  const app = createApp({
    engine,
    vm,
    ...(vm instanceof X86Guest
      ? { console: { buffer: vm.console, send: (text: string) => vm.sendConsole(text) } }
      : {}),
    dashboard,
    token,
    hosts: { listen: config.hostname, allowed: config.allowedHosts },
  });

  if (config.incoming) {
    try {
      const info = await engine.listenIncoming(config.incoming);
      console.log(`ferry: waiting for an incoming migration on ${info.address}`);
    } catch (e) {
      console.error(
        `ferry: cannot listen for --incoming ${config.incoming}: ${(e as Error).message}`,
      );
      await vm.close();
      return 1;
    }
  } else if (vm.disk?.incomplete) {
    console.error(
      `ferry: disk image ${vm.disk.path} holds an unfinished incoming block migration: the guest stays paused`,
    );
  } else if (!config.paused && !(vm instanceof QemuImage)) {
    vm.start();
  }

  const shutdown = new AbortController();
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    // The API line is printed below, once the token file is in place.
    server = Deno.serve({
      hostname: config.hostname,
      port: config.port,
      signal: shutdown.signal,
      onListen: () => {},
    }, app.fetch);
  } catch (e) {
    console.error(
      `ferry: cannot listen on ${config.hostname}:${config.port}: ${(e as Error).message}`,
    );
    await engine.close();
    await vm.close();
    return 1;
  }
  const { hostname, port } = server.addr;
  // A generated token goes to a file only this user can read, named after the real port.
  let tokenFile: string | undefined;
  if (config.token === undefined) {
    tokenFile = config.tokenFile ?? defaultTokenFile(port, {
      XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR"),
      HOME: Deno.env.get("HOME"),
    });
    try {
      if (tokenFile === undefined) {
        throw new TokenFileError("neither XDG_RUNTIME_DIR nor HOME is set");
      }
      writeTokenFile(tokenFile, token, { privateDir: config.tokenFile === undefined });
    } catch (e) {
      if (!(e instanceof TokenFileError)) throw e;
      console.error(
        `ferry: cannot store the generated API token: ${e.message} ` +
          "(pass --token-file PATH, or set FERRY_TOKEN)",
      );
      shutdown.abort();
      await server.finished;
      await engine.close();
      await vm.close();
      return 1;
    }
  }
  const bracket = (h: string) => h.includes(":") ? `[${h}]` : h;
  console.log(
    `ferry: API on http://${
      bracket(hostname)
    }:${port} (${vm.info().guest} guest, ${config.ramSize} bytes, ${vm.info().workload})`,
  );
  // A browser reaches a wildcard address through loopback.
  const browse = isWildcardHost(hostname)
    ? (hostname.includes(":") ? "::1" : "127.0.0.1")
    : hostname;
  const page = `http://${bracket(browse)}:${port}/`;
  if (tokenFile !== undefined) {
    console.log(`ferry: API token in ${tokenFile} (readable by you only)`);
    console.log(`ferry: dashboard ${page}#token=${token}`);
  } else {
    console.log(`ferry: dashboard ${page} (it asks for the --token/FERRY_TOKEN token)`);
  }
  const stop = () => shutdown.abort();
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  await server.finished;
  Deno.removeSignalListener("SIGINT", stop);
  Deno.removeSignalListener("SIGTERM", stop);
  if (tokenFile !== undefined) removeTokenFile(tokenFile, token);
  await engine.close();
  await vm.close();
  return 0;
}

if (import.meta.main) Deno.exit(await main());

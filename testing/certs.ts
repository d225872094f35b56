/**
 * Test certificates made with the `openssl` command into a temporary directory,
 * for TLS tests and benchmarks (transports/tls.ts): a CA, certificates it signs
 * for chosen names (one of them expired), and a second, unrelated CA with its own
 * certificate (what a man in the middle would present). P-256 keys, PEM files.
 * @module
 */

/** One certificate and its key, as PEM file paths. */
export interface CertFiles {
  readonly cert: string;
  readonly key: string;
}

/** What {@link makeTestPki} made; every path is inside {@link TestPki.dir}. */
export interface TestPki extends AsyncDisposable {
  readonly dir: string;
  /** The CA's certificate (what a source's tls_ca names). */
  readonly ca: string;
  /** A certificate the CA signed for `ferry-dst.test`, 127.0.0.1 and ::1, valid now. */
  readonly server: CertFiles;
  /** Signed by the CA for the same names, but valid only on 1-2 January 2020. */
  readonly expired: CertFiles;
  /** Signed by the CA for `other-host.test` only. */
  readonly otherName: CertFiles;
  /** A second CA, unrelated to the first. */
  readonly rogueCa: string;
  /** Signed by the rogue CA for the server's names (a man in the middle's certificate). */
  readonly rogue: CertFiles;
  /** A 32-byte migration secret file. */
  readonly secret: string;
  /** Another 32-byte secret file. */
  readonly otherSecret: string;
  /** A snapshot key file, 64 hex digits. */
  readonly snapshotKey: string;
  /** Another snapshot key file. */
  readonly otherSnapshotKey: string;
}

/** The name the server certificate is for. */
export const SERVER_NAME = "ferry-dst.test";

/** Runs openssl with `args` in `cwd`; throws with its stderr on failure. */
async function openssl(cwd: string, args: string[]): Promise<void> {
  const out = await new Deno.Command("openssl", {
    args,
    cwd,
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(`openssl ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
}

const EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];

async function makeCa(dir: string, name: string): Promise<void> {
  await openssl(dir, [
    "req",
    "-x509",
    ...EC,
    "-keyout",
    `${name}.key`,
    "-out",
    `${name}.pem`,
    "-days",
    "3",
    "-subj",
    `/CN=${name}`,
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
  ]);
}

/**
 * A key and a certificate request for `names` (DNS names or IP addresses), signed
 * by CA `ca` with `openssl ca`, valid from `start` to `end` (openssl's
 * YYYYMMDDHHMMSSZ) or for a day from now.
 */
async function issue(
  dir: string,
  ca: string,
  name: string,
  names: string[],
  dates?: { start: string; end: string },
): Promise<CertFiles> {
  const san = names.map((n) => /^[\d.]+$|:/.test(n) ? `IP:${n}` : `DNS:${n}`).join(",");
  await openssl(dir, [
    "req",
    ...EC,
    "-keyout",
    `${name}.key`,
    "-out",
    `${name}.csr`,
    "-subj",
    `/CN=${names[0]}`,
    "-addext",
    `subjectAltName=${san}`,
  ]);
  const db = `${dir}/${ca}-db`;
  await Deno.mkdir(db, { recursive: true });
  await Deno.writeTextFile(`${db}/index.txt`, "", { append: true });
  try {
    await Deno.stat(`${db}/serial`);
  } catch {
    await Deno.writeTextFile(`${db}/serial`, "1000\n");
  }
  await Deno.writeTextFile(
    `${dir}/${ca}.cnf`,
    [
      "[ca]",
      "default_ca = d",
      "[d]",
      `database = ${db}/index.txt`,
      `new_certs_dir = ${db}`,
      `serial = ${db}/serial`,
      "default_md = sha256",
      "default_days = 1",
      "policy = p",
      "copy_extensions = copy",
      "unique_subject = no",
      "x509_extensions = leaf",
      "[p]",
      "commonName = supplied",
      "[leaf]",
      "basicConstraints = critical,CA:FALSE",
      "keyUsage = critical,digitalSignature",
      "extendedKeyUsage = serverAuth",
      "",
    ].join("\n"),
  );
  await openssl(dir, [
    "ca",
    "-batch",
    "-notext",
    "-config",
    `${ca}.cnf`,
    "-cert",
    `${ca}.pem`,
    "-keyfile",
    `${ca}.key`,
    "-in",
    `${name}.csr`,
    "-out",
    `${name}.pem`,
    ...(dates ? ["-startdate", dates.start, "-enddate", dates.end] : []),
  ]);
  return { cert: `${dir}/${name}.pem`, key: `${dir}/${name}.key` };
}

/** Makes the certificates and keys of {@link TestPki} in a new temporary directory. */
export async function makeTestPki(): Promise<TestPki> {
  const dir = await Deno.makeTempDir({ prefix: "ferry-pki-" });
  try {
    const names = [SERVER_NAME, "127.0.0.1", "::1"];
    await makeCa(dir, "ca");
    await makeCa(dir, "rogue-ca");
    const server = await issue(dir, "ca", "server", names);
    const expired = await issue(dir, "ca", "expired", names, {
      start: "20200101000000Z",
      end: "20200102000000Z",
    });
    const otherName = await issue(dir, "ca", "other-name", ["other-host.test"]);
    const rogue = await issue(dir, "rogue-ca", "rogue", names);
    const random = (n: number) => crypto.getRandomValues(new Uint8Array(n));
    const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    await Deno.writeFile(`${dir}/secret`, random(32), { mode: 0o600 });
    await Deno.writeFile(`${dir}/other-secret`, random(32), { mode: 0o600 });
    await Deno.writeTextFile(`${dir}/snapshot.key`, hex(random(32)) + "\n", { mode: 0o600 });
    await Deno.writeTextFile(`${dir}/other-snapshot.key`, hex(random(32)) + "\n", {
      mode: 0o600,
    });
    return {
      dir,
      ca: `${dir}/ca.pem`,
      server,
      expired,
      otherName,
      rogueCa: `${dir}/rogue-ca.pem`,
      rogue,
      secret: `${dir}/secret`,
      otherSecret: `${dir}/other-secret`,
      snapshotKey: `${dir}/snapshot.key`,
      otherSnapshotKey: `${dir}/other-snapshot.key`,
      async [Symbol.asyncDispose]() {
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      },
    };
  } catch (e) {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw e;
  }
}

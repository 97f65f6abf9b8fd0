// Prints DPoP proofs made by panva's `dpop` package (installed by
// .ci/install-tools.sh into .tools/node), so scopegate's verifier is tested
// against proofs it did not make itself.
//
//   node tests/dpop/proof.mjs '{"alg":"ES256","requests":[{"htm":"GET","htu":"https://…","accessToken":"…","nonce":"…"}]}'
//
// prints {"jkt": "<RFC 7638 thumbprint>", "proofs": ["<compact JWS>", …]}:
// one fresh key per run, one proof per request.
import { pathToFileURL } from 'node:url'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const modules = process.env.SCOPEGATE_NODE_MODULES ?? join(here, '..', '..', '.tools', 'node', 'node_modules')
const dpop = await import(pathToFileURL(join(modules, 'dpop', 'build', 'index.js')).href)

const input = JSON.parse(process.argv[2] ?? '{}')
// `privateJwk` (from an earlier run's output) re-uses that key, so that a
// token can be bound to the key's thumbprint before its proofs are made.
const keypair = input.privateJwk ? await importKeyPair(input.privateJwk) : await dpop.generateKeyPair(input.alg ?? 'ES256', { extractable: true })
const proofs = []
for (const request of input.requests ?? []) {
  proofs.push(await dpop.generateProof(keypair, request.htu, request.htm, request.nonce, request.accessToken))
}
const jkt = await dpop.calculateThumbprint(keypair.publicKey)
const privateJwk = await crypto.subtle.exportKey('jwk', keypair.privateKey)
process.stdout.write(JSON.stringify({ jkt, proofs, privateJwk }) + '\n')

/** An ES256 key pair from its private JWK (the public half without `d`). */
async function importKeyPair (jwk) {
  const algorithm = { name: 'ECDSA', namedCurve: jwk.crv }
  const { d, ...publicJwk } = jwk
  const privateKey = await crypto.subtle.importKey('jwk', jwk, algorithm, true, ['sign'])
  const publicKey = await crypto.subtle.importKey('jwk', { ...publicJwk, key_ops: ['verify'] }, algorithm, true, ['verify'])
  return { privateKey, publicKey }
}

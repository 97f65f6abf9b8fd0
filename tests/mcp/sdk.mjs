// Loads @modelcontextprotocol/sdk (and its zod) from where .ci/install-tools.sh
// puts them, .tools/node/node_modules, or from $SCOPEGATE_NODE_MODULES. The
// scripts here live outside that tree, so bare imports would not resolve; one
// require() rooted there gives every script the same (CommonJS) instances.
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const modules = process.env.SCOPEGATE_NODE_MODULES ?? join(here, '..', '..', '.tools', 'node', 'node_modules')

/** require() resolving bare names from the installed node_modules. */
export const requireTool = createRequire(join(modules, 'package.json'))

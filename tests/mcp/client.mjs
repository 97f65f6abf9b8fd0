// A real MCP client: every step is the SDK's own code (Client,
// StreamableHTTPClientTransport, and the auth helpers of client/auth.js), so
// what it reports is what an MCP host built on the SDK would see.
//
//   node tests/mcp/client.mjs '{"url":"http://127.0.0.1:8080/mcp","token":"eyJ…",
//     "discover":true,"session":true,"calls":[{"tool":"read_orders","arguments":{}}]}'
//
// Prints one JSON object on stdout:
//   challenge  (discover) an initialize POST sent WITHOUT a token: its status,
//              raw WWW-Authenticate, and extractWWWAuthenticateParams' reading
//              of it (resource_metadata, scope, error)
//   metadata   (discover) discoverOAuthProtectedResourceMetadata (at the
//              challenge's resource_metadata when there is one, else the SDK's
//              own well-known fallback): resource, authorization_servers,
//              scopes_supported, resource_name; plus `selected_resource`, the
//              RFC 8707 resource the SDK would request (selectResourceURL,
//              which refuses a `resource` not matching the URL) or `error`
//   session    (session) connect with `Authorization: Bearer <token>` (when
//              given), tools/list, then each call: ok, the result's text, or
//              the HTTP status and the challenge the SDK read from the denial
//              (`scope` is what it would replace its scopes with on 403)
// Exits 0 whatever the server answered; only a bad input exits non-zero.
import { requireTool } from './sdk.mjs'

const { Client } = requireTool('@modelcontextprotocol/sdk/client/index.js')
const { StreamableHTTPClientTransport } = requireTool('@modelcontextprotocol/sdk/client/streamableHttp.js')
const {
  extractWWWAuthenticateParams,
  discoverOAuthProtectedResourceMetadata,
  selectResourceURL
} = requireTool('@modelcontextprotocol/sdk/client/auth.js')
const { LATEST_PROTOCOL_VERSION } = requireTool('@modelcontextprotocol/sdk/types.js')

const input = JSON.parse(process.argv[2] ?? '{}')
if (typeof input.url !== 'string') {
  process.stderr.write('usage: client.mjs \'{"url": "http://…/mcp", …}\'\n')
  process.exit(2)
}
const url = new URL(input.url)

/** What the SDK's own parser reads from a response's WWW-Authenticate. */
function challengeOf(response) {
  const params = extractWWWAuthenticateParams(response)
  return {
    status: response.status,
    www_authenticate: response.headers.get('www-authenticate'),
    resource_metadata: params.resourceMetadataUrl?.href ?? null,
    scope: params.scope ?? null,
    error: params.error ?? null
  }
}

function errorText(error) {
  return error instanceof Error ? error.message : String(error)
}

async function probe() {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({
      jsonrpc: '2.0',
      id: 0,
      method: 'initialize',
      params: {
        protocolVersion: LATEST_PROTOCOL_VERSION,
        capabilities: {},
        clientInfo: { name: 'scopegate-probe', version: '1.0.0' }
      }
    })
  })
  await response.body?.cancel()
  return challengeOf(response)
}

async function discover(challenge) {
  try {
    const metadata = await discoverOAuthProtectedResourceMetadata(url, {
      resourceMetadataUrl: challenge?.resource_metadata ?? undefined
    })
    const summary = {
      resource: metadata.resource,
      authorization_servers: metadata.authorization_servers ?? null,
      scopes_supported: metadata.scopes_supported ?? null,
      bearer_methods_supported: metadata.bearer_methods_supported ?? null,
      resource_name: metadata.resource_name ?? null
    }
    try {
      summary.selected_resource = (await selectResourceURL(url, {}, metadata))?.href ?? null
    } catch (error) {
      summary.selected_resource = null
      summary.error = errorText(error)
    }
    return summary
  } catch (error) {
    return { error: errorText(error) }
  }
}

async function session() {
  // Every response the transport gets, so a denial's challenge can be read
  // with the SDK's parser after the transport has turned it into an error.
  let lastDenied = null
  const recordingFetch = async (target, init) => {
    const response = await fetch(target, init)
    if (response.status === 401 || response.status === 403) {
      lastDenied = response
    }
    return response
  }
  const headers = input.token ? { Authorization: `Bearer ${input.token}` } : {}
  const transport = new StreamableHTTPClientTransport(url, { requestInit: { headers }, fetch: recordingFetch })
  const client = new Client({ name: 'scopegate-test-client', version: '1.0.0' })
  const failure = error => {
    const denied = lastDenied
    lastDenied = null
    return {
      ok: false,
      status: error?.code ?? denied?.status ?? null,
      error: errorText(error),
      challenge: denied ? challengeOf(denied) : null
    }
  }
  const result = {}
  try {
    await client.connect(transport)
    result.connected = true
  } catch (error) {
    result.connected = false
    result.connect_error = failure(error)
    return result
  }
  try {
    result.tools = (await client.listTools()).tools.map(tool => tool.name)
  } catch (error) {
    result.tools = null
    result.list_error = failure(error)
  }
  result.calls = []
  for (const call of input.calls ?? []) {
    try {
      const answer = await client.callTool({ name: call.tool, arguments: call.arguments ?? {} })
      result.calls.push({
        tool: call.tool,
        ok: !answer.isError,
        text: answer.content?.map(part => part.text ?? '').join('') ?? null
      })
    } catch (error) {
      result.calls.push({ tool: call.tool, ...failure(error) })
    }
  }
  await client.close().catch(() => {})
  return result
}

const summary = {}
if (input.discover) {
  summary.challenge = await probe().catch(error => ({ error: errorText(error) }))
  summary.metadata = await discover(summary.challenge)
}
if (input.session) {
  summary.session = await session()
}
process.stdout.write(JSON.stringify(summary) + '\n')

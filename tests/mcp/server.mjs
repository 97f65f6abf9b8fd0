// A real streamable-HTTP MCP server (the SDK's own McpServer and
// StreamableHTTPServerTransport, stateless) with two tools:
//   read_orders   {}           -> the orders, as text
//   delete_order  {id: string} -> "deleted <id>"
// Each tool result also names the `x-user-id` header the request carried, so
// a test behind Envoy + scopegate can see the claim headers reach the server.
//
//   node tests/mcp/server.mjs [PORT]      (or MCP_PORT=PORT; default 0 = any free port)
//
// Serves POST/GET/DELETE on /mcp (every other path is 404) on 127.0.0.1 and
// prints one line `listening <port>` on stdout once it accepts connections.
import { createServer } from 'node:http'
import { requireTool } from './sdk.mjs'

const { McpServer } = requireTool('@modelcontextprotocol/sdk/server/mcp.js')
const { StreamableHTTPServerTransport } = requireTool('@modelcontextprotocol/sdk/server/streamableHttp.js')
const { z } = requireTool('zod')

const ORDERS = [{ id: '1', item: 'tea' }, { id: '2', item: 'coffee' }]

function header(extra, name) {
  const value = extra?.requestInfo?.headers?.[name]
  return Array.isArray(value) ? value.join(',') : (value ?? null)
}

function mcpServer() {
  const server = new McpServer({ name: 'scopegate-test-orders', version: '1.0.0' })
  server.registerTool(
    'read_orders',
    { description: 'List the orders', inputSchema: {} },
    async (_args, extra) => ({
      content: [{ type: 'text', text: JSON.stringify({ orders: ORDERS, x_user_id: header(extra, 'x-user-id') }) }]
    })
  )
  server.registerTool(
    'delete_order',
    { description: 'Delete one order', inputSchema: { id: z.string() } },
    async ({ id }, extra) => ({
      content: [{ type: 'text', text: JSON.stringify({ deleted: id, x_user_id: header(extra, 'x-user-id') }) }]
    })
  )
  return server
}

const httpServer = createServer(async (req, res) => {
  const path = new URL(req.url, 'http://localhost').pathname
  if (path !== '/mcp') {
    res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"not_found"}')
    return
  }
  // Stateless: one server and transport per request, closed with it.
  const server = mcpServer()
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined })
  res.on('close', () => {
    transport.close()
    server.close()
  })
  try {
    await server.connect(transport)
    await transport.handleRequest(req, res)
  } catch (error) {
    if (!res.headersSent) {
      res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: String(error) }))
    }
  }
})

const port = Number(process.argv[2] ?? process.env.MCP_PORT ?? 0)
httpServer.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening ${httpServer.address().port}\n`)
})
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => httpServer.close(() => process.exit(0)))
}

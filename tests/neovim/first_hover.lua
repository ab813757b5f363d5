-- How long after its diagnostics a file's first hover shows trace values, in headless Neovim's own LSP
-- client (0.7+). Run by tests/benchmarks/bench_first_hover.py:
--
--   NEXTLS_NVIM_FILE=file.py NEXTLS_NVIM_OUT=result.json NEXTLS_NVIM_PYTHON=python \
--   NEXTLS_NVIM_HOVER=line,character NEXTLS_NVIM_SETTINGS='{"traceBackend": "debugpy"}' \
--     nvim --headless -u NONE -i NONE -n -c "luafile tests/neovim/first_hover.lua"
--
-- It opens the file, waits for nextls's diagnostics, then hovers at the 0-based position every 50 ms (as a
-- user pressing K again) until the hover shows a trace, and writes the times (ms, from opening) as JSON.

local file = os.getenv("NEXTLS_NVIM_FILE")
local out_path = os.getenv("NEXTLS_NVIM_OUT")
local python = os.getenv("NEXTLS_NVIM_PYTHON") or "python3"
local line, character = string.match(os.getenv("NEXTLS_NVIM_HOVER"), "(%d+),(%d+)")
local settings = vim.fn.json_decode(os.getenv("NEXTLS_NVIM_SETTINGS") or "{}")
local timeout_ms = tonumber(os.getenv("NEXTLS_NVIM_TIMEOUT_MS") or "120000")
local result = { nvim = tostring(vim.version().major) .. "." .. vim.version().minor .. "." .. vim.version().patch }

local function now_ms()
  return vim.loop.hrtime() / 1e6
end

local function finish()
  local handle = assert(io.open(out_path, "w"))
  handle:write(vim.fn.json_encode(result))
  handle:close()
  vim.cmd("qall!")
end

local function run()
  vim.cmd("edit " .. vim.fn.fnameescape(file))
  local bufnr = vim.api.nvim_get_current_buf()
  local uri = vim.uri_from_bufnr(bufnr)
  local started = now_ms()
  local client_id = vim.lsp.start_client({
    name = "nextls",
    cmd = { python, "-m", "nextls", "serve", "--stdio" },
    root_dir = vim.fn.fnamemodify(file, ":p:h"),
    settings = { nextls = settings },
    on_init = function(client)
      client.notify("workspace/didChangeConfiguration", { settings = client.config.settings })
    end,
  })
  assert(client_id, "the client did not start")
  assert(vim.lsp.buf_attach_client(bufnr, client_id), "could not attach")

  assert(vim.wait(timeout_ms, function() return #vim.diagnostic.get(bufnr) > 0 end, 5), "no diagnostics")
  result.diagnostics_ms = now_ms() - started
  result.diagnostics = #vim.diagnostic.get(bufnr)

  local hovers = 0
  local function traced_hover()
    hovers = hovers + 1
    local responses = vim.lsp.buf_request_sync(bufnr, "textDocument/hover", {
      textDocument = { uri = uri }, position = { line = tonumber(line), character = tonumber(character) },
    }, timeout_ms)
    local response = responses and responses[client_id]
    local text = response and response.result and response.result.contents.value or ""
    result.last_hover = response and response.err and vim.inspect(response.err) or text
    if text:find("NExT trace", 1, true) then
      result.hover = text
      return true
    end
    return false
  end
  local deadline = now_ms() + timeout_ms
  while not traced_hover() do
    assert(now_ms() < deadline, "no hover with trace values")
    vim.wait(50)
  end
  result.hover_ms = now_ms() - started
  result.hovers = hovers
  result.ok = true
end

local ok, err = pcall(run)
if not ok then
  result.ok = false
  result.error = tostring(err)
end
vim.lsp.stop_client(vim.lsp.get_active_clients())
finish()

-- Drive `nextls serve` from headless Neovim's built-in LSP client (0.7+: start_client + buf_attach_client;
-- `vim.lsp.start` needs 0.8). Run by tests/test_neovim.py:
--
--   NEXTLS_NVIM_FILE=buggy.py NEXTLS_NVIM_OUT=result.json NEXTLS_NVIM_PYTHON=python \
--     nvim --headless -u NONE -i NONE -n -c "luafile tests/neovim/nextls_client.lua"
--
-- It opens the file, waits for nextls's diagnostic and background trace, asks for a hover, inlay hints and
-- the quick fix, resolves it with codeAction/resolve, applies the WorkspaceEdit with Neovim's own
-- apply_workspace_edit, writes the buffer, and writes what it saw to NEXTLS_NVIM_OUT as JSON.

local file = os.getenv("NEXTLS_NVIM_FILE")
local out_path = os.getenv("NEXTLS_NVIM_OUT")
local python = os.getenv("NEXTLS_NVIM_PYTHON") or "python3"
local timeout_ms = tonumber(os.getenv("NEXTLS_NVIM_TIMEOUT_MS") or "90000")
local result = { nvim = tostring(vim.version().major) .. "." .. vim.version().minor .. "." .. vim.version().patch }

local function finish()
  local handle = assert(io.open(out_path, "w"))
  handle:write(vim.fn.json_encode(result))
  handle:close()
  vim.cmd("qall!")
end

local function request(bufnr, client_id, method, params)
  local responses, err = vim.lsp.buf_request_sync(bufnr, method, params, timeout_ms)
  assert(responses, method .. ": " .. tostring(err))
  local response = responses[client_id]
  assert(response and not response.err, method .. " failed: " .. vim.inspect(response and response.err))
  return response.result
end

local function run()
  vim.cmd("edit " .. vim.fn.fnameescape(file))
  local bufnr = vim.api.nvim_get_current_buf()
  local uri = vim.uri_from_bufnr(bufnr)
  local published = {}
  local client_id = vim.lsp.start_client({
    name = "nextls",
    cmd = { python, "-m", "nextls", "serve", "--stdio" },
    root_dir = vim.fn.fnamemodify(file, ":p:h"),
    settings = { nextls = { debounceMs = 0, k = 2 } },
    -- Neovim 0.7 neither answers workspace/configuration nor sends the settings by itself
    on_init = function(client)
      client.notify("workspace/didChangeConfiguration", { settings = client.config.settings })
    end,
    handlers = {
      ["textDocument/publishDiagnostics"] = function(err, params, ctx, config)
        if #params.diagnostics > 0 then
          published = params.diagnostics
        end
        return vim.lsp.diagnostic.on_publish_diagnostics(err, params, ctx, config)
      end,
    },
  })
  assert(client_id, "the client did not start")
  assert(vim.lsp.buf_attach_client(bufnr, client_id), "could not attach")
  local client = vim.lsp.get_client_by_id(client_id)

  assert(vim.wait(timeout_ms, function() return #vim.diagnostic.get(bufnr) > 0 end, 20), "no diagnostics")
  result.diagnostics = {}
  for _, d in ipairs(vim.diagnostic.get(bufnr)) do
    table.insert(result.diagnostics, { lnum = d.lnum, col = d.col, source = d.source, message = d.message })
  end

  -- the failing function is traced in the background; Neovim records $/progress in client.messages
  local function traced()
    for _, progress in pairs(client.messages.progress) do
      if progress.title and progress.title:find("NExT: tracing", 1, true) and progress.done then
        return true
      end
    end
    return false
  end
  assert(vim.wait(timeout_ms, traced, 20), "the trace never finished")

  local hover = request(bufnr, client_id, "textDocument/hover",
    { textDocument = { uri = uri }, position = { line = 7, character = 14 } })
  result.hover = hover and hover.contents.value or vim.NIL

  local hints = request(bufnr, client_id, "textDocument/inlayHint", {
    textDocument = { uri = uri },
    range = { start = { line = 0, character = 0 }, ["end"] = { line = vim.api.nvim_buf_line_count(bufnr), character = 0 } },
  })
  result.inlay_hints = {}
  for _, hint in ipairs(hints or {}) do
    table.insert(result.inlay_hints, { line = hint.position.line, label = hint.label })
  end

  local diagnostic = published[1]
  local actions = request(bufnr, client_id, "textDocument/codeAction", {
    textDocument = { uri = uri }, range = diagnostic.range, context = { diagnostics = { diagnostic } },
  })
  result.actions = {}
  for _, action in ipairs(actions or {}) do
    table.insert(result.actions, action.title)
  end
  local resolved = client.request_sync("codeAction/resolve", actions[1], timeout_ms, bufnr)
  assert(resolved and not resolved.err, "codeAction/resolve failed: " .. vim.inspect(resolved))
  result.resolved_title = resolved.result.title
  result.preferred = resolved.result.isPreferred or false
  assert(resolved.result.edit, "the resolved action has no edit")
  vim.lsp.util.apply_workspace_edit(resolved.result.edit, client.offset_encoding)
  vim.cmd("write")
  result.ok = true
end

local ok, err = pcall(run)
if not ok then
  result.ok = false
  result.error = tostring(err)
end
vim.lsp.stop_client(vim.lsp.get_active_clients())
finish()

-- fold_long_cells.lua: collapse long code cells of the book (used by _quarto.yml `filters:`).
--
-- Quarto folds a cell when its code block carries `code-fold` (set per cell with `#| code-fold: true`, or for
-- the whole site with `format: html: code-fold:`). This filter runs before Quarto's own filters and marks every
-- cell whose code has more than `fold-long-cells` lines (metadata, default 30) as `code-fold="true"`, so a
-- long listing starts collapsed ("code" summary) and the prose stays readable. A cell that sets `code-fold`
-- itself keeps its own choice (`#| code-fold: false` keeps a long cell open).

local threshold = 30

local function count_lines(s)
  local n = 1
  for _ in s:gmatch("\n") do n = n + 1 end
  return n
end

function Meta(meta)
  local v = meta["fold-long-cells"]
  if v ~= nil then
    local n = tonumber(pandoc.utils.stringify(v))
    if n ~= nil then threshold = n end
  end
end

function CodeBlock(block)
  if block.classes:includes("cell-code") and block.attributes["code-fold"] == nil
     and count_lines(block.text) > threshold then
    block.attributes["code-fold"] = "true"
    return block
  end
end

return {{Meta = Meta}, {CodeBlock = CodeBlock}}

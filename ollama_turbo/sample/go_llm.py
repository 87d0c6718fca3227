"""Era-specific Go of the miniature Ollama: how a model is run, and the KV type plumbing."""

from __future__ import annotations

LLM_TYPES_GO = """package llm

import (
	"context"
	"time"
)

// Options for one completion.
type Options struct {
	NumPredict int
}

// Completion is one streamed piece, or (Done) the final metrics.
type Completion struct {
	Content            string
	Done               bool
	PromptEvalCount    int
	PromptEvalDuration time.Duration
	EvalCount          int
	EvalDuration       time.Duration
}

// Server runs one loaded model.
type Server interface {
	Completion(ctx context.Context, prompt string, opts Options, fn func(Completion)) error
	KVCacheBytes() uint64
	Close() error
}
"""


def fs_ggml_go(era: str) -> str:
    supports = ""
    if era == "b":
        supports = """
// SupportsKVCacheType reports whether OLLAMA_KV_CACHE_TYPE may be used with this model.
func (g *GGML) SupportsKVCacheType(cacheType string) bool {
	return slices.Contains([]string{"f16", "q8_0", "q4_0"}, cacheType)
}
"""
    imports = 'import "slices"\n' if era == "b" else ""
    return f"""package ggml

{imports}
// kvCacheBytesPerElement is what one K or V element costs in the given cache type.
func kvCacheBytesPerElement(cacheType string) float64 {{
	switch cacheType {{
	case "q8_0":
		return 1 // half of f16
	case "q4_0":
		return 0.5 // a quarter of f16
	default:
		return 2 // f16 and anything unknown
	}}
}}

// KVCacheSize estimates the KV cache of numCtx tokens with the given cache type.
func (g *GGML) KVCacheSize(numCtx int, cacheType string) uint64 {{
	elements := g.BlockCount() * uint64(numCtx) * g.HeadCountKV() * g.EmbeddingHeadCount() * 2
	return uint64(float64(elements) * kvCacheBytesPerElement(cacheType))
}}
{supports}"""


def llama_server_go(pin_build: int) -> str:
    kv_unified = '\n\t\t"--kv-unified",' if pin_build >= 110 else ""
    return f"""package llm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ollama/ollama/envconfig"
	"github.com/ollama/ollama/fs/ggml"
)

// llamaServerPath finds llama-server next to the ollama binary, in lib/ollama/, or in
// ../lib/ollama/.
func llamaServerPath() (string, error) {{
	exe, err := os.Executable()
	if err != nil {{
		return "", err
	}}
	if resolved, err := filepath.EvalSymlinks(exe); err == nil {{
		exe = resolved
	}}
	dir := filepath.Dir(exe)
	candidates := []string{{
		filepath.Join(dir, "llama-server"),
		filepath.Join(dir, "lib", "ollama", "llama-server"),
		filepath.Join(dir, "..", "lib", "ollama", "llama-server"),
	}}
	for _, c := range candidates {{
		if st, err := os.Stat(c); err == nil && !st.IsDir() {{
			return c, nil
		}}
	}}
	return "", fmt.Errorf("llama-server not found; looked in %s", strings.Join(candidates, ", "))
}}

// llamaServerLaunchConfig is what one model's llama-server is started with.
type llamaServerLaunchConfig struct {{
	modelPath   string
	numCtx      int
	kvCacheType string
}}

// serverArgs is the llama-server command line for one model.
func serverArgs(launch llamaServerLaunchConfig, port int) []string {{
	params := []string{{
		"--model", launch.modelPath,
		"--ctx-size", strconv.Itoa(launch.numCtx),
		"--batch-size", "512",
		"--n-gpu-layers", "999",
		"--threads", strconv.Itoa(runtime.NumCPU()),
		"--parallel", strconv.Itoa(envconfig.NumParallel()),
		"--host", "127.0.0.1",
		"--port", strconv.Itoa(port),
		"--no-webui",{kv_unified}
	}}
	if envconfig.FlashAttention() {{
		params = append(params, "--flash-attn", "on")
	}}
	if launch.kvCacheType != "" {{
		params = append(params, "--cache-type-k", launch.kvCacheType, "--cache-type-v", launch.kvCacheType)
	}}
	if os.Getenv("OLLAMA_NO_MMAP") == "1" {{
		params = append(params, "--no-mmap")
	}}
	return params
}}

// tailWriter forwards output and keeps its last lines for error messages.
type tailWriter struct {{
	mu    sync.Mutex
	lines []string
}}

func (t *tailWriter) Write(p []byte) (int, error) {{
	os.Stderr.Write(p)
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, l := range strings.Split(strings.TrimRight(string(p), "\\n"), "\\n") {{
		t.lines = append(t.lines, l)
	}}
	if len(t.lines) > 20 {{
		t.lines = t.lines[len(t.lines)-20:]
	}}
	return len(p), nil
}}

func (t *tailWriter) last() string {{
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == 0 {{
		return ""
	}}
	return t.lines[len(t.lines)-1]
}}

type llamaServer struct {{
	cmd     *exec.Cmd
	port    int
	kvBytes uint64
	done    chan error
	mu      sync.Mutex
}}

func freePort() (int, error) {{
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {{
		return 0, err
	}}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}}

// newLlamaServerRunner starts llama-server for one model and waits until it is healthy.
func newLlamaServerRunner(launch llamaServerLaunchConfig, f *ggml.GGML) (Server, error) {{
	exe, err := llamaServerPath()
	if err != nil {{
		return nil, err
	}}
	port, err := freePort()
	if err != nil {{
		return nil, err
	}}
	cmd := exec.Command(exe, serverArgs(launch, port)...)
	tail := &tailWriter{{}}
	cmd.Stdout = tail
	cmd.Stderr = tail
	cmd.Env = os.Environ()
	slog.Info("starting llama server", "cmd", cmd.String())
	if err := cmd.Start(); err != nil {{
		return nil, fmt.Errorf("unable to start llama-server: %w", err)
	}}
	s := &llamaServer{{cmd: cmd, port: port, done: make(chan error, 1),
		kvBytes: f.KVCacheSize(launch.numCtx, launch.kvCacheType)}}
	go func() {{ s.done <- cmd.Wait() }}()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {{
		select {{
		case err := <-s.done:
			return nil, fmt.Errorf("llama runner process has terminated: %v: %s", err, tail.last())
		default:
		}}
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/health", port))
		if err == nil {{
			body := new(bytes.Buffer)
			body.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {{
				slog.Info("llama runner started", "health", strings.TrimSpace(body.String()))
				return s, nil
			}}
		}}
		time.Sleep(50 * time.Millisecond)
	}}
	s.Close()
	return nil, errors.New("timed out waiting for llama runner to start")
}}

func (s *llamaServer) KVCacheBytes() uint64 {{ return s.kvBytes }}

func (s *llamaServer) Close() error {{
	if s.cmd.Process != nil {{
		s.cmd.Process.Kill()
		<-s.done
	}}
	return nil
}}

type completionChunk struct {{
	Content string `json:"content"`
	Stop    bool   `json:"stop"`
	Timings struct {{
		PromptN     int     `json:"prompt_n"`
		PromptMS    float64 `json:"prompt_ms"`
		PredictedN  int     `json:"predicted_n"`
		PredictedMS float64 `json:"predicted_ms"`
	}} `json:"timings"`
}}

func (s *llamaServer) Completion(ctx context.Context, prompt string, opts Options, fn func(Completion)) error {{
	s.mu.Lock()
	defer s.mu.Unlock()
	body, _ := json.Marshal(map[string]any{{"prompt": prompt, "n_predict": opts.NumPredict, "stream": true}})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/completion", s.port), bytes.NewReader(body))
	if err != nil {{
		return err
	}}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {{
		return fmt.Errorf("llama runner: %w", err)
	}}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {{
		return fmt.Errorf("llama runner returned %s", resp.Status)
	}}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {{
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {{
			continue
		}}
		var c completionChunk
		if err := json.Unmarshal([]byte(line), &c); err != nil {{
			return fmt.Errorf("llama runner sent bad JSON: %w", err)
		}}
		if c.Stop {{
			fn(Completion{{Done: true, PromptEvalCount: c.Timings.PromptN,
				PromptEvalDuration: time.Duration(c.Timings.PromptMS * float64(time.Millisecond)),
				EvalCount:          c.Timings.PredictedN,
				EvalDuration:       time.Duration(c.Timings.PredictedMS * float64(time.Millisecond))}})
			return nil
		}}
		fn(Completion{{Content: c.Content}})
	}}
	if err := sc.Err(); err != nil {{
		return err
	}}
	return errors.New("llama runner closed the stream early")
}}
"""


LLM_SERVER_B_GO = """package llm

import (
	"context"
	"log/slog"
	"strings"
	"sync"

	"github.com/ollama/ollama/api"
	"github.com/ollama/ollama/envconfig"
	"github.com/ollama/ollama/fs/ggml"
	"github.com/ollama/ollama/llama"
)

type inProcess struct {
	mu    sync.Mutex
	model *llama.Model
	ctx   *llama.Context
}

// NewServer loads the model in this process through the vendored llama.cpp.
func NewServer(modelPath string, f *ggml.GGML, opts api.Options) (Server, error) {
	numCtx := opts.NumCtx
	kv := envconfig.KvCacheType()
	fa := envconfig.FlashAttention()
	if kv != "" && !f.SupportsKVCacheType(kv) {
		slog.Warn("unsupported OLLAMA_KV_CACHE_TYPE, falling back to f16", "type", kv)
		kv = ""
	}
	if kv != "" && kv != "f16" && !fa {
		slog.Warn("quantized kv cache requires flash attention, falling back to f16", "type", kv)
		kv = ""
	}
	m, err := llama.LoadModelFromFile(modelPath, llama.ModelParams{NumGpuLayers: 999, UseMmap: true})
	if err != nil {
		return nil, err
	}
	c, err := llama.NewContextWithModel(m, llama.ContextParams{NumCtx: numCtx, FlashAttention: fa, KvCacheType: kv})
	if err != nil {
		llama.FreeModel(m)
		return nil, err
	}
	slog.Info("model loaded", "system", llama.PrintSystemInfo(), "llama.cpp", llama.BuildCommit())
	return &inProcess{model: m, ctx: c}, nil
}

func (s *inProcess) KVCacheBytes() uint64 { return s.ctx.KVCacheBytes() }

func (s *inProcess) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ctx.Free()
	llama.FreeModel(s.model)
	return nil
}

func (s *inProcess) Completion(ctx context.Context, prompt string, opts Options, fn func(Completion)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	text, perf := s.ctx.Generate(prompt, opts.NumPredict)
	for i, w := range strings.Fields(text) {
		if i > 0 {
			w = " " + w
		}
		fn(Completion{Content: w})
	}
	fn(Completion{Done: true, PromptEvalCount: perf.PromptN, PromptEvalDuration: perf.PromptDuration,
		EvalCount: perf.EvalN, EvalDuration: perf.EvalDuration})
	return nil
}
"""

LLAMA_GO_B = """package llama

/*
#cgo CFLAGS: -std=c11
#cgo CXXFLAGS: -std=c++17
#cgo CPPFLAGS: -I${SRCDIR}/llama.cpp/include -I${SRCDIR}/../ml/backend/ggml/ggml/include
#include <stdlib.h>
#include "llama.h"

extern char const * LLAMA_COMMIT;
*/
import "C"

import (
	"errors"
	"fmt"
	"time"
	"unsafe"

	_ "github.com/ollama/ollama/llama/llama.cpp/src"
	_ "github.com/ollama/ollama/ml/backend/ggml/ggml/src"
)

func init() {
	C.llama_backend_init()
}

// BuildCommit is the llama.cpp commit the vendored sources came from.
func BuildCommit() string { return C.GoString(C.LLAMA_COMMIT) }

func PrintSystemInfo() string { return C.GoString(C.llama_print_system_info()) }

type Model struct{ c *C.struct_llama_model }

type ModelParams struct {
	NumGpuLayers int
	UseMmap      bool
	UseMlock     bool
}

func LoadModelFromFile(path string, params ModelParams) (*Model, error) {
	cparams := C.llama_model_default_params()
	cparams.n_gpu_layers = C.int32_t(params.NumGpuLayers)
	cparams.use_mmap = C.bool(params.UseMmap)
	cparams.use_mlock = C.bool(params.UseMlock)
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	m := C.llama_model_load_from_file(cpath, cparams)
	if m == nil {
		return nil, fmt.Errorf("unable to load model: %s", path)
	}
	return &Model{c: m}, nil
}

func FreeModel(m *Model) { C.llama_model_free(m.c) }

func (m *Model) NumLayers() int { return int(C.llama_model_n_layer(m.c)) }

type ContextParams struct {
	NumCtx         int
	FlashAttention bool
	KvCacheType    string
}

type Context struct{ c *C.struct_llama_context }

// kvCacheTypeFromStr maps OLLAMA_KV_CACHE_TYPE to a ggml type; anything unknown is f16.
func kvCacheTypeFromStr(s string) C.enum_ggml_type {
	switch s {
	case "q8_0":
		return C.GGML_TYPE_Q8_0
	case "q4_0":
		return C.GGML_TYPE_Q4_0
	default:
		return C.GGML_TYPE_F16
	}
}

func NewContextWithModel(m *Model, params ContextParams) (*Context, error) {
	cparams := C.llama_context_default_params()
	cparams.n_ctx = C.uint32_t(params.NumCtx)
	cparams.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_DISABLED
	if params.FlashAttention {
		cparams.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_ENABLED
	}
	cparams.type_k = kvCacheTypeFromStr(params.KvCacheType)
	cparams.type_v = kvCacheTypeFromStr(params.KvCacheType)
	c := C.llama_init_from_model(m.c, cparams)
	if c == nil {
		return nil, errors.New("unable to create llama context")
	}
	return &Context{c: c}, nil
}

func (c *Context) Free() { C.llama_free(c.c) }

func (c *Context) NumCtx() int { return int(C.llama_n_ctx(c.c)) }

func (c *Context) KVCacheBytes() uint64 { return uint64(C.llama_state_get_size(c.c)) }

type Perf struct {
	PromptN        int
	PromptDuration time.Duration
	EvalN          int
	EvalDuration   time.Duration
}

func (c *Context) Generate(prompt string, nPredict int) (string, Perf) {
	cprompt := C.CString(prompt)
	defer C.free(unsafe.Pointer(cprompt))
	buf := make([]byte, 1<<16)
	var perf C.struct_llama_perf_context_data
	n := C.llama_generate(c.c, cprompt, C.int32_t(nPredict), (*C.char)(unsafe.Pointer(&buf[0])), C.int32_t(len(buf)), nil, nil, &perf)
	return string(buf[:n]), Perf{
		PromptN: int(perf.n_p_eval), PromptDuration: time.Duration(float64(perf.t_p_eval_ms) * float64(time.Millisecond)),
		EvalN: int(perf.n_eval), EvalDuration: time.Duration(float64(perf.t_eval_ms) * float64(time.Millisecond)),
	}
}
"""

LLAMA_SRC_GO = """package llama

// Compiles the vendored llama.cpp sources into the ollama binary.

// #cgo CFLAGS: -std=c11
// #cgo CPPFLAGS: -I${SRCDIR}/../include -I${SRCDIR}/../../../ml/backend/ggml/ggml/include
import "C"
"""

GGML_SRC_GO = """package ggml

// Compiles the vendored ggml sources into the ollama binary.

// #cgo CFLAGS: -std=c11
// #cgo CPPFLAGS: -I${SRCDIR}/../include -I${SRCDIR}
import "C"
"""

METAL_GO = """package metal

import _ "embed"

//go:generate sh -c "cat ../ggml-common.h ggml-metal.metal > ggml-metal-embed.metal"

// Library is the Metal shader source, embedded into the binary.
//
//go:embed ggml-metal-embed.metal
var Library string
"""

ML_BACKEND_GO = """package ggml

/*
#cgo CPPFLAGS: -I${SRCDIR}/ggml/include
#include "ggml.h"
#include "ggml-backend.h"
*/
import "C"

import (
	metal "github.com/ollama/ollama/ml/backend/ggml/ggml/src/ggml-metal"
)

// Device describes one compute device.
type Device struct {
	Name        string
	Description string
	TotalMemory uint64
}

func Devices() []Device {
	var out []Device
	for i := C.size_t(0); i < C.ggml_backend_dev_count(); i++ {
		var props C.struct_ggml_backend_dev_props
		C.ggml_backend_dev_get_props(C.ggml_backend_dev_get(i), &props)
		out = append(out, Device{Name: C.GoString(props.name), Description: C.GoString(props.description),
			TotalMemory: uint64(props.memory_total)})
	}
	return out
}

// TypeName is ggml's name of a tensor type.
func TypeName(t int) string { return C.GoString(C.ggml_type_name(C.enum_ggml_type(t))) }

// RowSize is the bytes of n elements of type t.
func RowSize(t int, n int64) uint64 { return uint64(C.ggml_row_size(C.enum_ggml_type(t), C.int64_t(n))) }

// FlashAttentionOp is the name of ggml's flash attention op.
func FlashAttentionOp() string { return C.GoString(C.ggml_op_name(C.GGML_OP_FLASH_ATTN_EXT)) }

// MetalLibraryBytes is the size of the embedded Metal library.
func MetalLibraryBytes() int { return len(metal.Library) }
"""

ML_DTYPE_GO = """package ml

// DType is a tensor or cache data type of the Go engine.
type DType int

const (
	DTypeOther DType = iota
	DTypeF32
	DTypeF16
	DTypeQ80
	DTypeQ40
)
"""

RUNNER_CACHE_GO = """package ollamarunner

import "github.com/ollama/ollama/ml"

// kvCacheTypeFromStr maps OLLAMA_KV_CACHE_TYPE to the Go engine's cache type.
func kvCacheTypeFromStr(s string) ml.DType {
	switch s {
	case "q8_0":
		return ml.DTypeQ80
	case "q4_0":
		return ml.DTypeQ40
	default:
		return ml.DTypeF16
	}
}

// CacheType is the cache type the Go engine would use.
func CacheType(s string) ml.DType { return kvCacheTypeFromStr(s) }
"""


LLM_SERVER_C_GO = """package llm

import (
	"strings"

	"github.com/ollama/ollama/api"
	"github.com/ollama/ollama/envconfig"
	"github.com/ollama/ollama/fs/ggml"
)

// NewServer runs the model in a llama-server subprocess.
func NewServer(modelPath string, f *ggml.GGML, opts api.Options) (Server, error) {
	return NewLlamaServer(modelPath, f, opts)
}

// NewLlamaServer starts the model's llama-server with the host's one cache type.
func NewLlamaServer(modelPath string, f *ggml.GGML, opts api.Options) (Server, error) {
	kvct := strings.ToLower(envconfig.KvCacheType())
	return newLlamaServerRunner(llamaServerLaunchConfig{modelPath: modelPath, numCtx: opts.NumCtx, kvCacheType: kvct}, f)
}
"""

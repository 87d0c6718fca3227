"""Go HTTP API of the miniature Ollama (server/routes.go), shared by both eras."""

from __future__ import annotations

ROUTES_GO = """package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ollama/ollama/api"
	"github.com/ollama/ollama/envconfig"
	"github.com/ollama/ollama/fs/ggml"
	"github.com/ollama/ollama/llm"
	"github.com/ollama/ollama/version"
)

// mode is stamped with -X=github.com/ollama/ollama/server.mode=release for release builds.
var mode string = "debug"

type loaded struct {
	model     *Model
	runner    llm.Server
	numCtx    int
	runnerOpt api.Runner
	sizeVRAM  uint64
	expiresAt time.Time
}

// Server keeps one runner per model file: two models made from the same GGUF share it, so loading
// the one replaces the other's runner.
type Server struct {
	mu     sync.Mutex
	loaded map[string]*loaded // by model file (the GGUF blob's path)
}

func Serve() error {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	s := &Server{loaded: map[string]*loaded{}}
	ln, err := net.Listen("tcp", envconfig.Host())
	if err != nil {
		return fmt.Errorf("listen tcp %s: %w", envconfig.Host(), err)
	}
	slog.Info("server config", "OLLAMA_HOST", envconfig.Host(), "OLLAMA_MODELS", envconfig.Models(),
		"OLLAMA_KV_CACHE_TYPE", envconfig.KvCacheType(), "OLLAMA_FLASH_ATTENTION", envconfig.FlashAttention())
	slog.Info(fmt.Sprintf("Listening on %s (version %s)", ln.Addr(), version.Version), "mode", mode)
	srv := &http.Server{Handler: s.routes()}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-stop
		s.unloadAll()
		srv.Close()
	}()
	err = srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func (s *Server) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			writeError(w, http.StatusNotFound, "404 page not found")
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, "Ollama is running")
	})
	mux.HandleFunc("GET /api/version", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]string{"version": version.Version})
	})
	mux.HandleFunc("GET /api/tags", s.tags)
	mux.HandleFunc("POST /api/show", s.show)
	mux.HandleFunc("POST /api/generate", s.generate)
	mux.HandleFunc("GET /api/ps", s.ps)
	mux.HandleFunc("POST /api/create", s.create)
	mux.HandleFunc("DELETE /api/delete", s.delete)
	mux.HandleFunc("HEAD /api/blobs/{digest}", s.headBlob)
	mux.HandleFunc("POST /api/blobs/{digest}", s.postBlob)
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

func details(m *Model) map[string]any {
	format, _ := m.Config["model_format"].(string)
	family, _ := m.Config["model_family"].(string)
	return map[string]any{
		"parent_model":       "",
		"format":             format,
		"family":             family,
		"families":           []string{family},
		"parameter_size":     m.Config["parameter_size"],
		"quantization_level": m.Config["file_type"],
	}
}

func (s *Server) tags(w http.ResponseWriter, r *http.Request) {
	models, err := listModels()
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	out := []map[string]any{}
	for _, m := range models {
		out = append(out, map[string]any{
			"name": m.Name.String(), "model": m.Name.String(), "modified_at": m.ModifiedAt,
			"size": m.Size, "digest": m.Digest, "details": details(m),
		})
	}
	writeJSON(w, map[string]any{"models": out})
}

type nameRequest struct {
	Model string `json:"model"`
	Name  string `json:"name"`
}

func (r nameRequest) name() string {
	if r.Model != "" {
		return r.Model
	}
	return r.Name
}

func (s *Server) show(w http.ResponseWriter, r *http.Request) {
	var req nameRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	m, err := GetModel(req.name())
	if err != nil {
		writeError(w, http.StatusNotFound, err.Error())
		return
	}
	info := map[string]any{}
	if f, err := ggml.Decode(m.ModelPath); err == nil {
		for k, v := range f.KV {
			if _, isArray := v.([]any); !isArray {
				info[k] = v
			}
		}
	}
	var params []string
	keys := make([]string, 0, len(m.Params))
	for k := range m.Params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var modelfile strings.Builder
	fmt.Fprintf(&modelfile, "FROM %s\\n", m.ModelPath)
	for _, k := range keys {
		params = append(params, fmt.Sprintf("%-30s %v", k, m.Params[k]))
		fmt.Fprintf(&modelfile, "PARAMETER %s %v\\n", k, m.Params[k])
	}
	writeJSON(w, map[string]any{
		"modelfile": modelfile.String(), "parameters": strings.Join(params, "\\n"),
		"template": m.Template, "system": m.System, "details": details(m), "model_info": info,
	})
}

type generateRequest struct {
	Model   string         `json:"model"`
	Prompt  string         `json:"prompt"`
	System  string         `json:"system"`
	Stream  *bool          `json:"stream"`
	Options map[string]any `json:"options"`
}

func (s *Server) load(m *Model, opts api.Options) (*loaded, time.Duration, error) {
	numCtx := opts.NumCtx
	s.mu.Lock()
	defer s.mu.Unlock()
	key := m.ModelPath
	if l, ok := s.loaded[key]; ok && l.model.Name == m.Name && l.runnerOpt == opts.Runner && l.model.Digest == m.Digest {
		l.expiresAt = time.Now().Add(5 * time.Minute)
		return l, 0, nil
	}
	if l, ok := s.loaded[key]; ok {
		slog.Info("model file already has a runner: replacing it", "file", key, "was", l.model.Name.String(),
			"now", m.Name.String())
		l.runner.Close()
		delete(s.loaded, key)
	}
	start := time.Now()
	f, err := ggml.Decode(m.ModelPath)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", m.Name, err)
	}
	runner, err := llm.NewServer(m.ModelPath, f, opts)
	if err != nil {
		return nil, 0, err
	}
	l := &loaded{model: m, runner: runner, numCtx: numCtx, runnerOpt: opts.Runner, expiresAt: time.Now().Add(5 * time.Minute),
		sizeVRAM: uint64(f.FileSize) + runner.KVCacheBytes()}
	s.loaded[key] = l
	return l, time.Since(start), nil
}

func (s *Server) unloadAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, l := range s.loaded {
		l.runner.Close()
		delete(s.loaded, k)
	}
}

func (s *Server) generate(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	var req generateRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	m, err := GetModel(req.Model)
	if err != nil {
		writeError(w, http.StatusNotFound, err.Error())
		return
	}
	opts := map[string]any{}
	for k, v := range m.Params {
		opts[k] = v
	}
	for k, v := range req.Options {
		opts[k] = v
	}
	options, err := api.FromMap(opts)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if options.NumCtx == 0 {
		options.NumCtx = envconfig.ContextLength()
	}
	if options.NumPredict == 0 {
		options.NumPredict = 32
	}
	l, loadDuration, err := s.load(m, options)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	if req.Prompt == "" {
		writeJSON(w, map[string]any{"model": req.Model, "created_at": time.Now().UTC(), "response": "", "done": true, "done_reason": "load"})
		return
	}
	stream := req.Stream == nil || *req.Stream
	prompt := req.Prompt
	if sys := req.System; sys != "" || m.System != "" {
		if sys == "" {
			sys = m.System
		}
		prompt = sys + "\\n" + prompt
	}
	flusher, _ := w.(http.Flusher)
	if stream {
		w.Header().Set("Content-Type", "application/x-ndjson")
	}
	var full strings.Builder
	var final llm.Completion
	err = l.runner.Completion(r.Context(), prompt, llm.Options{NumPredict: options.NumPredict}, func(c llm.Completion) {
		if c.Done {
			final = c
			return
		}
		full.WriteString(c.Content)
		if stream {
			_ = json.NewEncoder(w).Encode(map[string]any{"model": req.Model, "created_at": time.Now().UTC(), "response": c.Content, "done": false})
			if flusher != nil {
				flusher.Flush()
			}
		}
	})
	if err != nil {
		if stream {
			_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
		} else {
			writeError(w, http.StatusInternalServerError, err.Error())
		}
		return
	}
	resp := map[string]any{
		"model": req.Model, "created_at": time.Now().UTC(), "response": "", "done": true, "done_reason": "stop",
		"total_duration": time.Since(start).Nanoseconds(), "load_duration": loadDuration.Nanoseconds(),
		"prompt_eval_count": final.PromptEvalCount, "prompt_eval_duration": final.PromptEvalDuration.Nanoseconds(),
		"eval_count": final.EvalCount, "eval_duration": final.EvalDuration.Nanoseconds(),
	}
	if !stream {
		resp["response"] = full.String()
	}
	writeJSON(w, resp)
}

func (s *Server) ps(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []map[string]any{}
	for _, l := range s.loaded {
		out = append(out, map[string]any{
			"name": l.model.Name.String(), "model": l.model.Name.String(), "size": l.sizeVRAM,
			"digest": l.model.Digest, "details": details(l.model), "expires_at": l.expiresAt,
			"size_vram": l.sizeVRAM, "context_length": l.numCtx,
		})
	}
	writeJSON(w, map[string]any{"models": out})
}

func (s *Server) headBlob(w http.ResponseWriter, r *http.Request) {
	p, err := blobPath(r.PathValue("digest"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if _, err := os.Stat(p); err != nil {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (s *Server) postBlob(w http.ResponseWriter, r *http.Request) {
	digest := r.PathValue("digest")
	if _, err := blobPath(digest); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	layer, err := writeBlob(mediaModel, r.Body)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	if layer.Digest != digest {
		p, _ := blobPath(layer.Digest)
		os.Remove(p)
		writeError(w, http.StatusBadRequest, "digest mismatch, expected \\""+digest+"\\", got \\""+layer.Digest+"\\"")
		return
	}
	w.WriteHeader(http.StatusCreated)
}

type createRequest struct {
	Model      string            `json:"model"`
	From       string            `json:"from"`
	Files      map[string]string `json:"files"`
	Parameters map[string]any    `json:"parameters"`
	Template   *string           `json:"template"`
	System     *string           `json:"system"`
	Stream     *bool             `json:"stream"`
}

func (s *Server) create(w http.ResponseWriter, r *http.Request) {
	var req createRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	name, err := ParseName(req.Model)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	var modelLayer Layer
	params := map[string]any{}
	template, system := "", ""
	switch {
	case len(req.Files) > 0:
		for _, digest := range req.Files {
			p, err := blobPath(digest)
			if err != nil {
				writeError(w, http.StatusBadRequest, err.Error())
				return
			}
			st, err := os.Stat(p)
			if err != nil {
				writeError(w, http.StatusBadRequest, "blob "+digest+" not found; upload it with POST /api/blobs/"+digest)
				return
			}
			modelLayer = Layer{MediaType: mediaModel, Digest: digest, Size: st.Size()}
		}
	case req.From != "":
		base, err := GetModel(req.From)
		if err != nil {
			writeError(w, http.StatusNotFound, err.Error())
			return
		}
		mf, _ := readManifest(base.Name)
		for _, l := range mf.Layers {
			if l.MediaType == mediaModel {
				modelLayer = l
			}
		}
		params, template, system = base.Params, base.Template, base.System
	default:
		writeError(w, http.StatusBadRequest, "neither 'from' nor 'files' was specified")
		return
	}
	p, _ := blobPath(modelLayer.Digest)
	f, err := ggml.Decode(p)
	if err != nil {
		writeError(w, http.StatusBadRequest, "model file is not a GGUF model: "+err.Error())
		return
	}
	params, err = setParameters(params, req.Parameters)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.Template != nil {
		template = *req.Template
	}
	if req.System != nil {
		system = *req.System
	}
	cfg, _ := json.Marshal(map[string]any{"model_format": "gguf", "model_family": f.Architecture(),
		"file_type": fileTypeName(f.KV["general.file_type"]), "parameter_size": f.KV["general.size_label"]})
	cfgLayer, err := writeBlob(mediaConfig, strings.NewReader(string(cfg)))
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	layers := []Layer{modelLayer}
	if len(params) > 0 {
		b, _ := json.Marshal(params)
		l, err := writeBlob(mediaParams, strings.NewReader(string(b)))
		if err != nil {
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		}
		layers = append(layers, l)
	}
	for _, t := range []struct{ media, text string }{{mediaTemplate, template}, {mediaSystem, system}} {
		if t.text == "" {
			continue
		}
		l, err := writeBlob(t.media, strings.NewReader(t.text))
		if err != nil {
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		}
		layers = append(layers, l)
	}
	mf := &Manifest{SchemaVersion: 2, MediaType: "application/vnd.docker.distribution.manifest.v2+json", Config: cfgLayer, Layers: layers}
	if err := writeManifest(name, mf); err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	s.mu.Lock()
	for k, l := range s.loaded {
		if l.model.Name == name {
			l.runner.Close()
			delete(s.loaded, k)
		}
	}
	s.mu.Unlock()
	if req.Stream == nil || *req.Stream {
		w.Header().Set("Content-Type", "application/x-ndjson")
		enc := json.NewEncoder(w)
		_ = enc.Encode(map[string]string{"status": "parsing GGUF"})
		_ = enc.Encode(map[string]string{"status": "writing manifest"})
		_ = enc.Encode(map[string]string{"status": "success"})
		return
	}
	writeJSON(w, map[string]string{"status": "success"})
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request) {
	var req nameRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	n, err := ParseName(req.name())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := os.Remove(manifestPath(n)); err != nil {
		writeError(w, http.StatusNotFound, fmt.Sprintf("model '%s' not found", req.name()))
		return
	}
	w.WriteHeader(http.StatusOK)
}

var _ = context.Background

// fileTypeName is the quantization level shown for a general.file_type.
func fileTypeName(v any) string {
	names := map[uint32]string{0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
		10: "Q2_K", 12: "Q4_K_M", 15: "Q4_K_M", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}
	if n, ok := v.(uint32); ok {
		if name, ok := names[n]; ok {
			return name
		}
		return fmt.Sprintf("file_type_%d", n)
	}
	return "unknown"
}
"""


API_TYPES_GO = """package api

import "encoding/json"

// Runner holds the options that start a model's runner: a change reloads the model.
type Runner struct {
	NumCtx int `json:"num_ctx,omitempty"`
}

// Options of a request: the runner's and the sampler's.
type Options struct {
	Runner
	NumPredict  int     `json:"num_predict,omitempty"`
	Temperature float32 `json:"temperature,omitempty"`
}

// FromMap reads options from a Modelfile's parameters and a request's options.
func FromMap(m map[string]any) (Options, error) {
	var o Options
	b, err := json.Marshal(m)
	if err != nil {
		return o, err
	}
	err = json.Unmarshal(b, &o)
	return o, err
}
"""

CREATE_GO = """package server

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
)

// setParameters merges a model's new parameters over those it was created from.
func setParameters(existing map[string]any, p map[string]any) (map[string]any, error) {
	if p == nil {
		p = map[string]any{}
	}
	for k, v := range existing {
		if _, ok := p[k]; !ok {
			p[k] = v
		}
	}
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	slog.Info("model parameters", "keys", strings.Join(keys, ","), "count", fmt.Sprint(len(keys)))
	return p, nil
}
"""

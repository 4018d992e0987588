# kedge build, test and lab targets. Run `make help` for a list.
SHELL := /bin/bash
GO ?= go
BUF ?= $(shell command -v buf 2>/dev/null || echo $(HOME)/go/bin/buf)
BIN := bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/kedge-io/kedge/internal/version.Version=$(VERSION)
export CGO_ENABLED := 0

.PHONY: help build generate check-generated lint test unit e2e lab-deps demo demo-down bench clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

build: ## build the three binaries and the K3s test double into bin/
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/kedge-coordinator ./cmd/kedge-nodeagent ./cmd/kedgectl
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/k3s-test-double ./test/k3sdouble/cmd/k3s

generate: ## regenerate Go code from proto/ with the pinned local plugins
	$(BUF) generate

check-generated: generate ## fail when committed generated code is out of date
	@git diff --exit-code -- proto || { echo "generated code is out of date: run make generate and commit"; exit 1; }

lint: check-generated ## buf lint, gofmt, go vet
	$(BUF) lint
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./test/e2e/...

unit: ## unit and in-process integration tests (no root needed)
	$(GO) test -count=1 ./...

e2e: lab-deps build ## the NUC lab tests (root: systemd-nspawn, network namespaces)
	KEDGE_LAB_PREBUILT=1 $(GO) test -tags e2e -count=1 -timeout 40m -v ./test/e2e/...

test: unit e2e ## every test, the lab included

LAB_PACKAGES := systemd-container debootstrap iproute2 etcd-client

# The lab's Debian packages, installed when missing and run as root (the lab
# itself says which apt-get command to run otherwise).
lab-deps:
	@if [ "$$(id -u)" = 0 ] && ! dpkg -s $(LAB_PACKAGES) >/dev/null 2>&1; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y $(LAB_PACKAGES) || { apt-get update && apt-get install -y $(LAB_PACKAGES); }; \
	fi

demo: lab-deps build ## boot a coordinator and 5 NUCs into an HA cluster (root; installs the Debian packages it needs)
	$(GO) build -trimpath -o $(BIN)/kedge-lab ./test/lab/cmd/kedge-lab
	KEDGE_LAB_PREBUILT=1 ./$(BIN)/kedge-lab up

demo-down: ## tear down a lab left by a killed demo (state under /run/kedge-lab/)
	$(GO) build -trimpath -o $(BIN)/kedge-lab ./test/lab/cmd/kedge-lab
	./$(BIN)/kedge-lab down

LOADGEN_NODES ?= 5000
bench: build ## load and speed figures: Go benchmarks and a simulated fleet against a real coordinator (docs/performance.md)
	$(GO) test -run '^$$' -bench . -benchmem ./coordinator/...
	$(GO) build -trimpath -o $(BIN)/kedge-loadgen ./test/loadgen/cmd/kedge-loadgen
	./$(BIN)/kedge-loadgen --coordinator $(BIN)/kedge-coordinator --nodes $(LOADGEN_NODES)

clean:
	rm -rf $(BIN)

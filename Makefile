# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup clean recbole-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[onnx,bench,dev,peel,serve,faiss]"
	# ml-100k ships inside the recbole wheel; --no-deps keeps its heavy requirements out.
	$(BIN)/python -m pip install -q --no-deps recbole==1.2.1
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pocketrec demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

# A separate venv for the RecBole peers: SASRec in benchmarks/teacher_speed.py (benchmarks/recbole_peer.py runs in
# it) and LightGCN in benchmarks/lightgcn_peer.py (benchmarks/recbole_lightgcn_peer.py).
# RecBole 1.2.1 needs numpy<2 and pandas<3. Its declared requirements are installed except ray and plotly:
# RecBole imports them only for hyper-parameter search (recbole.quick_start imports ray, so the peer script
# drives Config/create_dataset/Trainer itself), and ray 2.6.3 does not import without pkg_resources anyway.
# scipy<1.12: RecBole 1.2.1's LightGCN (and its other graph models) builds the adjacency with
# dok_matrix._update, which newer scipy no longer has (AttributeError); the last line below checks it.
RECBOLE_VENV := .venv-recbole
RECBOLE_BIN := $(RECBOLE_VENV)/bin
RECBOLE_STAMP := $(RECBOLE_VENV)/.installed

recbole-venv: $(RECBOLE_STAMP)

$(RECBOLE_STAMP):
	test -x $(RECBOLE_BIN)/python || $(PYTHON) -m venv $(RECBOLE_VENV)
	$(RECBOLE_BIN)/python -m pip install -q --upgrade pip
	$(RECBOLE_BIN)/python -m pip install -q torch==2.13.0
	$(RECBOLE_BIN)/python -m pip install -q torch==2.13.0 'numpy<2' 'pandas<3' 'scipy>=1.6,<1.12' 'scikit-learn>=0.23.2' \
		tqdm pyyaml colorlog==4.7.2 colorama==0.4.4 tensorboard texttable thop psutil tabulate
	$(RECBOLE_BIN)/python -m pip install -q --no-deps recbole==1.2.1
	$(RECBOLE_BIN)/python -c "import recbole.data, recbole.trainer, recbole.model.sequential_recommender"
	$(RECBOLE_BIN)/python -c "import scipy.sparse as sp; sp.dok_matrix((1, 1))._update({})"
	touch $@

clean:
	rm -rf $(VENV) $(RECBOLE_VENV) build *.egg-info src/*.egg-info

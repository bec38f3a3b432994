BEGIN TRANSACTION;
CREATE TABLE latency (
	id INTEGER NOT NULL, 
	suite VARCHAR(200) NOT NULL, 
	mixer VARCHAR(200) NOT NULL, 
	backbone VARCHAR(64) NOT NULL, 
	size VARCHAR(32) NOT NULL, 
	mode VARCHAR(16) NOT NULL, 
	context INTEGER NOT NULL, 
	batch INTEGER NOT NULL, 
	dtype VARCHAR(32) NOT NULL, 
	device VARCHAR(200) NOT NULL, 
	backend VARCHAR(200) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	median_ms FLOAT, 
	p20_ms FLOAT, 
	p80_ms FLOAT, 
	tokens_per_s FLOAT, 
	peak_memory_bytes INTEGER, 
	environment JSON, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "latency" VALUES(1,'legacy','attention','transformer','micro','prefill',64,1,'float32','cpu','sdpa','ok',1.5,1.4,1.7,4000.0,NULL,'{"device": "cpu"}','2026-12-01 23:22:58.100039');
INSERT INTO "latency" VALUES(2,'legacy','attention','transformer','micro','decode',64,1,'float32','cpu','sdpa','ok',1.5,1.4,1.7,4000.0,NULL,'{"device": "cpu"}','2026-12-01 23:22:58.100044');
CREATE TABLE metrics (
	id INTEGER NOT NULL, 
	run_id INTEGER NOT NULL, 
	step INTEGER NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	value FLOAT NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (run_id, step, name), 
	FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE CASCADE
);
INSERT INTO "metrics" VALUES(1,1,1,'train/loss',3.5);
INSERT INTO "metrics" VALUES(2,1,2,'train/loss',3.25);
INSERT INTO "metrics" VALUES(3,1,2,'val/ppl',21.5);
CREATE TABLE position_loss (
	id INTEGER NOT NULL, 
	run_id INTEGER NOT NULL, 
	bucket INTEGER NOT NULL, 
	start INTEGER NOT NULL, 
	"end" INTEGER NOT NULL, 
	loss FLOAT NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (run_id, bucket), 
	FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE CASCADE
);
INSERT INTO "position_loss" VALUES(1,1,0,0,16,3.4);
INSERT INTO "position_loss" VALUES(2,1,1,16,32,3.1);
CREATE TABLE runs (
	id INTEGER NOT NULL, 
	run_key VARCHAR(64) NOT NULL, 
	suite VARCHAR(200) NOT NULL, 
	mixer VARCHAR(200) NOT NULL, 
	backbone VARCHAR(64) NOT NULL, 
	size VARCHAR(32) NOT NULL, 
	seq_len INTEGER NOT NULL, 
	dataset VARCHAR(500) NOT NULL, 
	n_params INTEGER, 
	n_params_non_embedding INTEGER, 
	backend VARCHAR(200), 
	status VARCHAR(16) NOT NULL, 
	error TEXT, 
	claimed_by VARCHAR(200), 
	config JSON NOT NULL, 
	environment JSON, 
	checkpoint_path VARCHAR(1000), 
	created_at DATETIME NOT NULL, 
	started_at DATETIME, 
	finished_at DATETIME, 
	PRIMARY KEY (id)
);
INSERT INTO "runs" VALUES(1,'aaaaaaaaaaaaaaaa','legacy','attention','transformer','micro',32,'builtin:kjv',1234,1000,'sdpa','done',NULL,'vm:6555','{"size": "micro", "lr": 0.003}','{"device": "cpu", "torch": "2.13.0"}','/ckpt/aaaa','2026-12-01 23:22:58.089379','2026-12-01 23:22:58.088237','2026-12-01 23:22:58.091760');
INSERT INTO "runs" VALUES(2,'bbbbbbbbbbbbbbbb','legacy','attention','transformer','tiny',32,'builtin:kjv',NULL,NULL,NULL,'failed','TrainingDiverged: loss became nan at step 3 of 10','vm:6555','{"size": "tiny", "lr": 0.003}','{"device": "cpu"}',NULL,'2026-12-01 23:22:58.096303','2026-12-01 23:22:58.096080','2026-12-01 23:22:58.097114');
CREATE TABLE schema_info (
	version INTEGER NOT NULL, 
	PRIMARY KEY (version)
);
INSERT INTO "schema_info" VALUES(2);
CREATE UNIQUE INDEX ix_runs_run_key ON runs (run_key);
CREATE INDEX ix_runs_status ON runs (status);
CREATE INDEX ix_runs_suite ON runs (suite);
CREATE INDEX ix_latency_suite ON latency (suite);
CREATE INDEX ix_metrics_run_id ON metrics (run_id);
CREATE INDEX ix_position_loss_run_id ON position_loss (run_id);
COMMIT;
